"""Service guards run inside the kernel interceptor: after decoding and validation, before
the handler, under the call's request context, span, error mapping, metrics and log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from llmesh.kernel.config import load_settings
from llmesh.kernel.context import current_request
from llmesh.kernel.errors import Unauthenticated
from llmesh.kernel.server import ServiceHost

ECHO = "/kerneltest.v1.EchoService/Echo"
ECHO_STREAM = "/kerneltest.v1.EchoService/EchoStream"


class KeyGuard:
    """Admits calls carrying ``x-key: open``; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, str]] = []

    def applies(self, method: str) -> bool:
        return not method.startswith("/grpc.health.v1.")

    async def check(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        ctx = current_request()
        self.seen.append((method, request, ctx.request_id if ctx else ""))
        if dict(context.invocation_metadata() or ()).get("x-key") != "open":
            raise Unauthenticated("send x-key: open", reason="MISSING_CREDENTIALS")


@pytest.fixture
async def guarded(
    echo_pb: tuple[ModuleType, ModuleType],
) -> AsyncIterator[tuple[ServiceHost, KeyGuard]]:
    from kerneltest.echo_server import SERVICE, EchoSettings, setup_for

    guard = KeyGuard()
    host = ServiceHost(load_settings(EchoSettings), service_names=[SERVICE], guards=[guard])
    await setup_for(*echo_pb)(host).__aenter__()
    await host.start()
    yield host, guard
    await host.stop(0)


OPEN = (("x-key", "open"), ("x-request-id", "req-42"))


async def test_a_guard_sees_the_decoded_request_in_the_call_context(
    echo_pb: Any, guarded: tuple[ServiceHost, KeyGuard]
) -> None:
    host, guard = guarded
    pb, pb_grpc = echo_pb
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = pb_grpc.EchoServiceStub(channel)
        reply = await stub.Echo(pb.EchoRequest(message="hi"), metadata=OPEN, timeout=5)
        streamed = [m async for m in stub.EchoStream(pb.EchoStreamRequest(count=2), metadata=OPEN)]
    assert reply.message == "hi" and len(streamed) == 2
    (method, request, request_id), (stream_method, *_rest) = guard.seen
    assert method == ECHO and stream_method == ECHO_STREAM
    assert isinstance(request, pb.EchoRequest) and request.message == "hi"
    assert request_id == "req-42"


async def test_a_guard_refusal_is_mapped_logged_and_counted(
    echo_pb: Any, guarded: tuple[ServiceHost, KeyGuard], caplog: pytest.LogCaptureFixture
) -> None:
    host, _guard = guarded
    pb, pb_grpc = echo_pb
    with caplog.at_level(logging.INFO, logger="llmesh.access"):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = pb_grpc.EchoServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Echo(pb.EchoRequest(message="hi"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as stream_err:
                async for _ in stub.EchoStream(pb.EchoStreamRequest(count=2), timeout=5):
                    pass
    for error in (err.value, stream_err.value):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        status = rpc_status.from_call(error)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info) and info.reason == "MISSING_CREDENTIALS"
    codes = [r.__dict__.get("code") for r in caplog.records if r.name == "llmesh.access"]
    assert codes == ["UNAUTHENTICATED", "UNAUTHENTICATED"]


async def test_bad_requests_are_refused_before_any_guard(
    echo_pb: Any, guarded: tuple[ServiceHost, KeyGuard]
) -> None:
    host, guard = guarded
    pb, _ = echo_pb
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        raw = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await raw(bytes.fromhex("0a01ff"), timeout=5)  # not UTF-8
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await raw(pb.EchoRequest(message="x" * 65).SerializeToString(), timeout=5)
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert guard.seen == []  # neither reached the guard (nor needed credentials)


async def test_methods_a_guard_does_not_apply_to_skip_it(
    guarded: tuple[ServiceHost, KeyGuard],
) -> None:
    host, guard = guarded
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert guard.seen == []
