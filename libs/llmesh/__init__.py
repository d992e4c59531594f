"""llmesh: a gRPC service mesh that serves local LLMs with memory."""

__version__ = "0.1.0"
