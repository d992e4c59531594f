"""RPC helpers for tests: the rich error details of a failed call, and an OTLP trace
collector that services started by a test export their spans to."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

_DETAILS = (
    ("error_info", error_details_pb2.ErrorInfo),
    ("retry_info", error_details_pb2.RetryInfo),
    ("bad_request", error_details_pb2.BadRequest),
    ("quota_failure", error_details_pb2.QuotaFailure),
)


def error_details(exc: grpc.RpcError) -> dict[str, Any]:
    """The ``google.rpc`` details in a failed call's trailers, by kind (``error_info``,
    ``retry_info``, ``bad_request``, ``quota_failure``)."""
    found: dict[str, Any] = {}
    trailers: Any = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, value in trailers:
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            for name, cls in _DETAILS:
                if detail.Is(cls.DESCRIPTOR):
                    message = cls()
                    detail.Unpack(message)
                    found[name] = message
    return found


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: ``spans`` holds (service name, span) for every span."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._server: grpc.Server | None = None

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> str:
        """Serve on a free loopback port; returns the OTLP endpoint (host:port)."""
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0)
