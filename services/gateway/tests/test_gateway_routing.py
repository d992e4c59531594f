"""The gateway's routing served in-process over real gRPC (fake workers): failover before
the first token, breakers, every worker failing, interruption after a token, client
cancel, and routing from the last snapshot while the registry is down."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, gateway_pb2

pytestmark = pytest.mark.timeout(60)


async def test_stream_fails_over_before_first_token_and_breaker_cycles(
    mesh_factory: Any,
) -> None:
    async with mesh_factory(routing={"breaker_threshold": 2, "breaker_cooldown_s": 2.0}) as mesh:
        w0, w1 = mesh.workers["w0"], mesh.workers["w1"]
        w0.mode = "fail_first"
        meta = mesh.auth(mesh.user_key)
        breaker = mesh.gateway.balancer.breaker("w0")

        async def stream_once() -> None:
            chunks = [
                c
                async for c in mesh.stub().GenerateStream(
                    gateway_pb2.GenerateStreamRequest(input=common_pb2.GenerationInput(prompt="p")),
                    metadata=meta,
                )
            ]
            assert chunks[0].start.worker_id == "w1"  # w0's failure never reaches the client
            assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_LENGTH

        # The balancer picks at random between the two, so w0 is tried on some calls only:
        # stream until it has failed twice (bounded), then it must not be tried again.
        for _ in range(60):
            await stream_once()
            if w0.calls >= 2:
                break
        assert w0.calls == 2
        assert breaker.current() == "open"
        for _ in range(6):
            await stream_once()
        assert w0.calls == 2  # breaker open after two failures: w0 no longer tried
        w0.mode = "ok"
        await await_until(
            lambda: _async(breaker.current() == "half_open"), timeout_s=5, what="half-open"
        )
        seen = set()
        for _ in range(20):
            reply = await mesh.stub().Generate(
                gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="p")),
                metadata=meta,
            )
            seen.add(reply.worker_id)
        assert "w0" in seen and breaker.current() == "closed"
        assert w1.calls >= 6


async def _async(value: bool) -> bool:
    return value


async def test_every_worker_failing_is_unavailable_with_retry_info(mesh: Any) -> None:
    for worker in mesh.workers.values():
        worker.mode = "fail_first"
    error = await mesh.failure(
        mesh.stub().Generate(
            gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="p")),
            metadata=mesh.auth(mesh.user_key),
        )
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert mesh.details(error)["retry_info"].retry_delay.ToMilliseconds() > 0
    unknown = await mesh.failure(
        mesh.stub().Generate(
            gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="p", model="nope")),
            metadata=mesh.auth(mesh.user_key),
        )
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_failure_after_first_token_is_stream_interrupted(mesh: Any) -> None:
    for worker in mesh.workers.values():
        worker.mode = "fail_after"
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for chunk in mesh.stub().GenerateStream(
            gateway_pb2.GenerateStreamRequest(input=common_pb2.GenerationInput(prompt="p")),
            metadata=mesh.auth(mesh.user_key),
        ):
            received.append(chunk)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    error_info = mesh.details(info.value)["error_info"]
    assert error_info.reason == "STREAM_INTERRUPTED"
    assert error_info.metadata["tokens_delivered"] == "1"
    assert [c.WhichOneof("event") for c in received] == ["start", "delta"]
    assert received[0].start.model == "tiny" and received[0].start.worker_id
    assert sum(w.calls for w in mesh.workers.values()) == 1  # no retry after a token


async def test_client_cancel_cancels_the_worker_stream(mesh: Any) -> None:
    for worker in mesh.workers.values():
        worker.mode = "hang"
    call = mesh.stub().GenerateStream(
        gateway_pb2.GenerateStreamRequest(input=common_pb2.GenerationInput(prompt="p")),
        metadata=mesh.auth(mesh.user_key),
    )
    first = await call.read()
    busy = mesh.workers[first.start.worker_id]
    assert busy.active
    call.cancel()
    await await_until(lambda: _async(not busy.active), timeout_s=5, what="worker cancel")
    assert busy.cancelled == 1


async def test_registry_down_keeps_routing_from_the_last_snapshot(mesh_factory: Any) -> None:
    async with mesh_factory() as mesh:
        watcher = mesh.gateway.watcher
        await watcher.stop()  # the registry stream is gone
        mesh.gateway.cache.mark(connected=False)
        reply = await mesh.stub().Generate(
            gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="p")),
            metadata=mesh.auth(mesh.user_key),
        )
        assert reply.worker_id in mesh.workers
        await asyncio.sleep(0)  # staleness grows from the disconnect
        listed = await mesh.admin().ListWorkers(
            gateway_pb2.ListWorkersRequest(), metadata=mesh.auth(mesh.admin_key)
        )
        assert listed.staleness_seconds > 0 and len(listed.workers) == 2
