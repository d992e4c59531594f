"""OpenAI's error shape, and the one table from the gateway's gRPC status to it.

Every failure the door answers is an :class:`OpenAIError`: its own checks of the HTTP
request (JSON, OpenAI-only fields), and the gateway's answers, translated here by
:func:`from_gateway` from the status code plus the ``google.rpc.Status`` details the
gateway's kernel sends (``ErrorInfo`` reason -> ``code``, ``BadRequest`` field paths ->
``param``, ``RetryInfo`` -> ``Retry-After``). Nothing else picks an HTTP status.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from llmesh.kernel.upstream import peer_details

# gRPC status -> (HTTP status, OpenAI error type). The gateway's caller faults keep
# their meaning; server faults are 5xx; RESOURCE_EXHAUSTED is a rate limit (429).
STATUS_TABLE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.ABORTED: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
# ErrorInfo reasons whose HTTP status is more precise than their code's.
REASON_STATUS: dict[str, int] = {"REQUEST_TOO_LARGE": 413}
SERVER_FAULT = (500, "server_error")


@dataclass
class OpenAIError(Exception):
    """An HTTP error answer: ``{"error": {"message", "type", "param", "code"}}``."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.metadata:
            error["llmesh"] = dict(self.metadata)
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {
            "retry-after": str(max(1, math.ceil(self.retry_after_s))),
            "retry-after-ms": str(max(0, round(self.retry_after_s * 1000))),
        }


def bad_request(message: str, *, param: str | None, code: str = "invalid_value") -> OpenAIError:
    """A 400 for a request field the door itself checks (OpenAI-only fields)."""
    return OpenAIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ParamMap:
    """Request field paths of one gRPC request -> OpenAI body parameters, by prefix.

    ``("input.sampling.", "")`` turns ``input.sampling.top_p`` into ``top_p``;
    ``("input.messages.messages", "messages")`` turns
    ``input.messages.messages[2].content`` into ``messages[2].content``.
    """

    prefixes: Sequence[tuple[str, str]] = ()

    def param(self, path: str) -> str:
        for prefix, name in sorted(self.prefixes, key=lambda p: -len(p[0])):
            if path == prefix.rstrip(".") and name:
                return name
            if path.startswith(prefix):
                return name + path[len(prefix) :]
        return path


def from_gateway(exc: grpc.aio.AioRpcError, params: ParamMap) -> OpenAIError:
    """The gateway's failure as the door's answer (the one table)."""
    code = exc.code()
    details = peer_details(exc)
    status, kind = STATUS_TABLE.get(code, SERVER_FAULT)
    status = REASON_STATUS.get(details.reason, status)
    if details.sent:
        message = exc.details() or code.name
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = f"gateway {code.name.lower().replace('_', ' ')}"  # transport: no addresses
    else:
        message = f"gateway call failed ({code.name})"
    param = None
    if details.fields:
        names = [(params.param(v.field), v.description) for v in details.fields]
        param = names[0][0]
        message = "; ".join(f"{name}: {description}" for name, description in names)
    retry = details.retry_after_s
    if retry is None and code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        retry = 1.0
    return OpenAIError(
        status,
        message,
        type=kind,
        param=param,
        code=(details.reason or code.name).lower(),
        retry_after_s=retry,
        metadata=dict(details.metadata or {}),
    )
