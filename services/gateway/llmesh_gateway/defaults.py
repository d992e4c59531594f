"""Server defaults for request fields a client left unset (limits live in the protos)."""

from __future__ import annotations

from llmesh.v1 import common_pb2

DEFAULT_MAX_TOKENS = 256
DEFAULT_HISTORY = 20


def max_tokens_of(sampling: common_pb2.SamplingParams) -> int:
    """The effective ``max_tokens`` (server default when unset)."""
    return sampling.max_tokens if sampling.HasField("max_tokens") else DEFAULT_MAX_TOKENS
