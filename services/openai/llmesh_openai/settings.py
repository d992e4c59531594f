"""Typed settings of the OpenAI door (env prefix ``LLMESH_OPENAI_``, nested ``__``)."""

from __future__ import annotations

from pydantic import Field

from llmesh.kernel.config import ServiceSettings, service_settings_config

DEFAULT_PORT = 8080


class OpenAISettings(ServiceSettings):
    """Settings of ``llmesh serve openai``; every field is also an env variable.

    ``default_deadline_s`` / ``max_deadline_s`` bound the deadline given to the gateway
    call when the client sends no timeout header; ``max_message_bytes`` is also the
    largest request body (413 beyond it).
    """

    model_config = service_settings_config("openai")

    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    gateway_address: str = "127.0.0.1:50051"
    """The gateway's gRPC address (TLS to it from ``client_tls``)."""
    health_timeout_s: float = Field(default=1.0, gt=0, le=30)
    """Deadline of the gateway readiness check behind ``GET /health``."""
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    """Largest request line + header section; a larger one is refused (400) and the
    connection closed."""
