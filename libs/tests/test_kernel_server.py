"""The kernel through a real gRPC server (the test-only echo service) and real stubs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from llmesh.kernel.config import ConfigError, load_settings
from llmesh.kernel.server import ServiceHost
from llmesh.kernel.telemetry import setup_telemetry
from llmesh.testing.servers import free_port

ECHO_SERVER = Path(__file__).parent / "kerneltest" / "echo_server.py"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_telemetry("kernel-tests", span_exporter=exporter)
    return exporter


async def _start(pb: tuple[ModuleType, ModuleType], **settings: Any) -> ServiceHost:
    from kerneltest.echo_server import SERVICE, EchoSettings, setup_for

    host = ServiceHost(load_settings(EchoSettings, **settings), service_names=[SERVICE])
    setup = setup_for(*pb)
    await setup(host).__aenter__()
    await host.start()
    return host


@pytest.fixture
async def echo(echo_pb: tuple[ModuleType, ModuleType]) -> AsyncIterator[ServiceHost]:
    host = await _start(echo_pb, default_deadline_s=7.0, max_deadline_s=20.0)
    yield host
    await host.stop(0)


def _stub(pb: tuple[ModuleType, ModuleType], port: int) -> tuple[Any, grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return pb[1].EchoServiceStub(channel), channel


async def test_health_serving_for_every_name(echo: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "liveness", "readiness", "kerneltest.v1.EchoService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        await echo.health.set_ready(False)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        live = await stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        assert live.status == health_pb2.HealthCheckResponse.SERVING


async def test_call_without_deadline_gets_the_default(echo_pb: Any, echo: ServiceHost) -> None:
    stub, channel = _stub(echo_pb, echo.port or 0)
    async with channel:
        reply = await stub.Echo(echo_pb[0].EchoRequest(message="hi"))
        assert 6000 < reply.remaining_ms <= 7000
        capped = await stub.Echo(echo_pb[0].EchoRequest(message="hi"), timeout=100)
        assert 19000 < capped.remaining_ms <= 20000
        assert len(reply.request_id) == 32 and reply.request_id != capped.request_id


async def test_server_default_deadline_is_enforced(echo_pb: Any) -> None:
    host = await _start(echo_pb, default_deadline_s=0.2, max_deadline_s=1.0)
    try:
        stub, channel = _stub(echo_pb, host.port or 0)
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Echo(echo_pb[0].EchoRequest(sleep_ms=3000))
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await host.stop(0)


async def test_deadline_and_trace_propagate_across_two_hops(
    echo_pb: Any, spans: InMemorySpanExporter
) -> None:
    first = await _start(echo_pb)
    second = await _start(echo_pb)
    spans.clear()
    try:
        stub, channel = _stub(echo_pb, first.port or 0)
        async with channel:
            reply = await stub.Echo(
                echo_pb[0].EchoRequest(
                    message="x", sleep_ms=50, next_hop=f"127.0.0.1:{second.port}"
                ),
                timeout=5,
            )
    finally:
        await first.stop(0)
        await second.stop(0)
    assert reply.remaining_ms < 5000
    # The second hop sees the caller's deadline minus the time already spent.
    assert 0 < reply.hop.remaining_ms < reply.remaining_ms
    assert reply.hop.trace_id == reply.trace_id
    # The request id travels with the call.
    assert reply.hop.request_id == reply.request_id
    finished = [
        s for s in spans.get_finished_spans() if s.context.trace_id == int(reply.trace_id, 16)
    ]
    servers = [s for s in finished if s.kind == SpanKind.SERVER]
    clients = [s for s in finished if s.kind == SpanKind.CLIENT]
    assert len(servers) == 2 and len(clients) == 1
    outer = next(
        s
        for s in servers
        if s.parent is None or s.parent.span_id not in {c.context.span_id for c in clients}
    )
    inner = next(s for s in servers if s is not outer)
    client = clients[0]
    assert client.parent is not None and client.parent.span_id == outer.context.span_id
    assert inner.parent is not None and inner.parent.span_id == client.context.span_id


async def test_validation_error_is_invalid_argument_with_bad_request(
    echo_pb: Any, echo: ServiceHost
) -> None:
    stub, channel = _stub(echo_pb, echo.port or 0)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Echo(echo_pb[0].EchoRequest(fail_field="message"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    assert status is not None
    bad = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    assert len(bad) == 1
    decoded = error_details_pb2.BadRequest()
    bad[0].Unpack(decoded)
    assert [v.field for v in decoded.field_violations] == ["message"]
    assert "non-empty" in decoded.field_violations[0].description


async def test_unexpected_error_is_internal_without_internals(
    echo_pb: Any, echo: ServiceHost
) -> None:
    stub, channel = _stub(echo_pb, echo.port or 0)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Echo(echo_pb[0].EchoRequest(crash=True))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in (err.value.details() or "")
    assert "request id" in (err.value.details() or "")


async def test_streaming_call_passes_through(echo_pb: Any, echo: ServiceHost) -> None:
    stub, channel = _stub(echo_pb, echo.port or 0)
    async with channel:
        got = [m.index async for m in stub.EchoStream(echo_pb[0].EchoStreamRequest(count=5))]
    assert got == [0, 1, 2, 3, 4]


async def test_own_deadline_mid_stream_says_what_was_delivered(echo_pb: Any) -> None:
    """The server's own deadline (no client deadline: the default) passing mid-stream is
    DEADLINE_EXCEEDED with ErrorInfo tokens_delivered (messages, for a non-token stream)."""
    from google.rpc import error_details_pb2

    from llmesh.kernel.upstream import status_details

    host = await _start(echo_pb, default_deadline_s=0.3, max_deadline_s=1.0)
    try:
        stub, channel = _stub(echo_pb, host.port or 0)
        received = 0
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.EchoStream(
                    echo_pb[0].EchoStreamRequest(count=100, interval_ms=50)
                ):
                    received += 1
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert received > 0
        status = status_details(err.value)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.metadata["tokens_delivered"] == str(received)
    finally:
        await host.stop(0)


async def test_refuses_non_loopback_bind_without_tls(echo_pb: Any) -> None:
    with pytest.raises(ConfigError, match="without TLS"):
        await _start(echo_pb, host="0.0.0.0")


async def test_sigterm_drains_in_flight_call_and_exits_zero(
    echo_pb_dir: Path, echo_pb: Any
) -> None:
    port = free_port()
    secret = "sk-planted-secret-7f3a9"
    proc = subprocess.Popen(
        [sys.executable, str(ECHO_SERVER), "--pb-dir", str(echo_pb_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=15, wait_for_ready=True)
            watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            stub = echo_pb[1].EchoServiceStub(channel)
            call = stub.Echo(
                echo_pb[0].EchoRequest(message="slow", sleep_ms=1500),
                timeout=20,
                metadata=(("authorization", f"Bearer {secret}"), ("x-api-key", secret)),
            )
            # Wait until the handler runs, then ask the server to stop.
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            assert b"ECHO-STARTED" in line
            proc.send_signal(signal.SIGTERM)
            update = await asyncio.wait_for(watch.read(), timeout=5)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # The watch then ends cleanly (OK) instead of being cancelled by the stop,
            # which grpc-aio would log as an unhandled CancelledError with a traceback.
            assert await asyncio.wait_for(watch.read(), timeout=10) is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK
            reply = await call
            assert reply.message == "slow"
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    logs = proc.stderr.read().decode()
    lines = [line for line in logs.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, logs  # every line is a JSON object
    records = [json.loads(line) for line in lines]
    assert secret not in logs
    access = [r for r in records if r.get("method") == "/kerneltest.v1.EchoService/Echo"]
    assert access and {"request_id", "trace_id", "span_id"} <= set(access[-1])
    assert any(r.get("code") == "OK" and "duration_ms" in r for r in access)


async def test_prometheus_metrics_count_rpcs_by_method_and_code(
    echo_pb_dir: Path, echo_pb: Any
) -> None:
    import urllib.request

    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ECHO_SERVER),
            "--pb-dir",
            str(echo_pb_dir),
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = echo_pb[1].EchoServiceStub(channel)
            await stub.Echo(echo_pb[0].EchoRequest(message="a"), timeout=15, wait_for_ready=True)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(echo_pb[0].EchoRequest(fail_field="message"), timeout=5)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
    finally:
        proc.terminate()
        proc.wait(15)
    counts = [
        line
        for line in text.splitlines()
        if line.startswith("rpc_server_duration_milliseconds_count")
        and "/kerneltest.v1.EchoService/Echo" in line
    ]
    assert any('status_code="OK"' in line and line.endswith(" 1.0") for line in counts), counts
    assert any('status_code="INVALID_ARGUMENT"' in line for line in counts), counts
    # The event loop's task count (a leak shows as a count that only grows: make soak).
    tasks = [line for line in text.splitlines() if line.startswith("process_asyncio_tasks")]
    assert tasks and float(tasks[0].rsplit(" ", 1)[1]) >= 1, tasks
