"""SERVER spans of the kernel interceptor, started with the OpenTelemetry API directly.

The span of each call is what OpenTelemetry's gRPC instrumentation would make (name
``/package.Service/Method``, kind SERVER, ``rpc.system=grpc``, ``rpc.service``,
``rpc.method``, ``rpc.grpc.status_code``, the peer's address, status ERROR for the
codes the semantic conventions call server errors), with the parent taken from the
caller's W3C ``traceparent`` by the configured propagator. It costs less: no proxy
around the servicer context, no handler rebuilt per call, attributes per method built
once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

# Codes the semantic conventions mark ERROR on a server span (the others are the
# caller's fault and leave the status unset), as OpenTelemetry's instrumentation does.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def method_attributes(method: str) -> dict[str, Any]:
    """The span attributes every call of ``method`` (``/pkg.Service/Method``) shares."""
    service, _, name = method.lstrip("/").partition("/")
    return {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": name,
        "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
    }


def peer_attributes(peer: str | None, attributes: dict[str, Any]) -> None:
    """Add ``net.peer.ip``/``net.peer.port`` of a grpc peer (``ipv4:127.0.0.1:5123``)."""
    if not peer or peer.startswith("unix:"):
        return
    _, _, address = peer.partition(",")[0].partition(":")
    ip, _, port = address.rpartition(":")
    if "%" in ip:  # grpc may percent-encode an IPv6 address: ipv6:%5B::1%5D:5123
        ip = unquote(ip)
    if ip:
        attributes["net.peer.ip"] = ip
        attributes["net.peer.port"] = port
        if ip in ("127.0.0.1", "[::1]"):
            attributes["net.peer.name"] = "localhost"


class ServerSpans:
    """Starts and ends the SERVER span of each call (one per call, made current)."""

    def __init__(self, name: str = "llmesh.rpc") -> None:
        self._tracer = trace.get_tracer(name)

    def start(
        self,
        method: str,
        attributes: Mapping[str, Any],
        carrier: Mapping[str, Any],
        peer: str | None,
    ) -> tuple[Span, object]:
        """Start the span of ``method``, child of the caller's trace context in
        ``carrier`` (the call's metadata), and make it current; returns it with the token
        for :meth:`end`."""
        parent = propagate.extract(carrier) if carrier else None
        attrs = dict(attributes)
        user_agent = carrier.get("user-agent")
        if isinstance(user_agent, str):
            attrs["rpc.user_agent"] = user_agent
        peer_attributes(peer, attrs)
        span = self._tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER, attributes=attrs
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token

    @staticmethod
    def end(
        span: Span,
        token: object,
        code: grpc.StatusCode,
        message: str = "",
        error: BaseException | None = None,
    ) -> None:
        """Record the status (and an unexpected ``error``), end the span, detach it."""
        if code is not grpc.StatusCode.OK and span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if error is not None:
                span.record_exception(error)
            if code in SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]
