"""The kernel interceptor's SERVER spans: OpenTelemetry's rpc semantic conventions, the
parent from the caller's ``traceparent``, ERROR only for server-side failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llmesh.kernel.config import load_settings
from llmesh.kernel.server import ServiceHost
from llmesh.kernel.telemetry import setup_telemetry
from llmesh.kernel.tracing import peer_attributes
from llmesh.testing.polling import await_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_telemetry("kernel-tests", span_exporter=exporter)
    return exporter


@pytest.fixture
async def echo(echo_pb: tuple[ModuleType, ModuleType]) -> AsyncIterator[ServiceHost]:
    from kerneltest.echo_server import SERVICE, EchoSettings, setup_for

    host = ServiceHost(load_settings(EchoSettings), service_names=[SERVICE])
    await setup_for(*echo_pb)(host).__aenter__()
    await host.start()
    yield host
    await host.stop(0)


async def _call(pb: Any, pb_grpc: Any, port: int, request: Any) -> grpc.StatusCode:
    parent = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await pb_grpc.EchoServiceStub(channel).Echo(request, metadata=parent, timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def _server_span(spans: InMemorySpanExporter) -> ReadableSpan:
    """The call's one SERVER span. The server ends it after the status went out, so a
    client that saw the status may be a moment early: poll with a deadline."""

    def finished() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]

    async def ended() -> bool:
        return bool(finished())

    await await_until(ended, timeout_s=5, what="the server span")
    (span,) = finished()
    return span


async def test_server_span_follows_rpc_conventions_with_the_callers_parent(
    echo_pb: Any, echo: ServiceHost, spans: InMemorySpanExporter
) -> None:
    pb, pb_grpc = echo_pb
    spans.clear()
    assert await _call(pb, pb_grpc, echo.port or 0, pb.EchoRequest(message="hi")) == (
        grpc.StatusCode.OK
    )
    span = await _server_span(spans)
    assert span.name == "/kerneltest.v1.EchoService/Echo"
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.parent is not None and span.parent.span_id == int(PARENT_ID, 16)
    attributes = dict(span.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "kerneltest.v1.EchoService"
    assert attributes["rpc.method"] == "Echo"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["net.peer.ip"] == "127.0.0.1"
    assert span.status.status_code == StatusCode.UNSET


@pytest.mark.parametrize(
    "case",
    [
        ({"crash": True}, grpc.StatusCode.INTERNAL, StatusCode.ERROR),  # the server's fault
        ({"fail_field": "message"}, grpc.StatusCode.INVALID_ARGUMENT, StatusCode.UNSET),
    ],
)
async def test_failed_call_span_has_its_code_and_error_only_for_server_faults(
    echo_pb: Any,
    echo: ServiceHost,
    spans: InMemorySpanExporter,
    case: tuple[dict[str, Any], grpc.StatusCode, StatusCode],
) -> None:
    request_fields, code, status = case
    pb, pb_grpc = echo_pb
    spans.clear()
    assert await _call(pb, pb_grpc, echo.port or 0, pb.EchoRequest(**request_fields)) == code
    span = await _server_span(spans)
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert span.status.status_code == status
    # Only an unexpected error is recorded on the span (never a domain error's stack).
    assert [e.name for e in span.events] == (["exception"] if code.value[0] == 13 else [])


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:10.1.2.3:5123", {"net.peer.ip": "10.1.2.3", "net.peer.port": "5123"}),
        (
            "ipv6:[::1]:40000",
            {"net.peer.ip": "[::1]", "net.peer.port": "40000", "net.peer.name": "localhost"},
        ),
        (
            "ipv6:%5B::1%5D:40001",
            {"net.peer.ip": "[::1]", "net.peer.port": "40001", "net.peer.name": "localhost"},
        ),
        ("unix:/tmp/socket", {}),
        (None, {}),
    ],
)
def test_peer_attributes(peer: str | None, expected: dict[str, str]) -> None:
    attributes: dict[str, Any] = {}
    peer_attributes(peer, attributes)
    assert attributes == expected


async def _trailers(pb_grpc: Any, port: int, request: Any, stream: bool) -> dict[str, str]:
    parent = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"), ("x-request-id", "req-7"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        call = (stub.EchoStream if stream else stub.Echo)(request, metadata=parent, timeout=5)
        try:
            if stream:
                async for _ in call:
                    pass
            else:
                await call
        except grpc.aio.AioRpcError:
            pass
        return {k: v for k, v in await call.trailing_metadata() if isinstance(v, str)}


@pytest.mark.parametrize(
    ("stream", "fields"),
    [
        (False, {"message": "hi"}),
        (False, {"fail_field": "message"}),  # a domain error: aborted with details
        (False, {"message": "x" * 65}),  # refused by validation, before any handler
        (True, {"count": 2}),
    ],
)
async def test_every_call_returns_its_trace_and_request_id_in_trailers(
    echo_pb: Any, echo: ServiceHost, spans: InMemorySpanExporter, stream: bool, fields: Any
) -> None:
    """Clients quote the trace id in support tickets: it is the SERVER span's, whether
    the call succeeded or failed."""
    pb, pb_grpc = echo_pb
    request = (pb.EchoStreamRequest if stream else pb.EchoRequest)(**fields)
    trailers = await _trailers(pb_grpc, echo.port or 0, request, stream)
    assert trailers["x-trace-id"] == TRACE_ID
    assert trailers["x-request-id"] == "req-7"
