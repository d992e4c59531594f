"""The registry over real gRPC: servicer, validation, readiness, and two Redis replicas."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.server import ServiceHost
from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.testing.servers import RedisServer, start_redis
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_registry.settings import RegistrySettings
from llmesh_registry.wiring import SERVICE_NAMES, wire

READY = common_pb2.WORKER_STATE_READY
UNHEALTHY = common_pb2.WORKER_STATE_UNHEALTHY
DRAINING = common_pb2.WORKER_STATE_DRAINING


@contextlib.asynccontextmanager
async def registry(
    **overrides: Any,
) -> AsyncIterator[tuple[registry_pb2_grpc.RegistryServiceAsyncStub, grpc.aio.Channel]]:
    settings = RegistrySettings(port=0, readiness_interval_s=0.05, **overrides)
    async with serving(
        settings, SERVICE_NAMES, lambda host: wire(host, settings), grace_s=0.5
    ) as served:
        channel = grpc.aio.insecure_channel(served.address)
        try:
            stub: registry_pb2_grpc.RegistryServiceAsyncStub = (
                registry_pb2_grpc.RegistryServiceStub(
                    channel  # type: ignore[assignment]
                )
            )
            yield stub, channel
        finally:
            await channel.close(None)


def register_request(
    worker_id: str, model: str = "tiny", zone: str = "a"
) -> registry_pb2.RegisterRequest:
    return registry_pb2.RegisterRequest(
        worker=common_pb2.WorkerInfo(
            worker_id=worker_id,
            address="127.0.0.1:50054",
            labels=common_pb2.Labels(entries={"zone": zone}),
            models_loaded=[model],
            models_available=[model],
            capacity=4,
            state=READY,
        )
    )


class StreamReader:
    """Reads a WatchWorkers stream in the background into a list (keepalives apart)."""

    def __init__(self, stub: registry_pb2_grpc.RegistryServiceAsyncStub, since: int = 0) -> None:
        self.messages: list[registry_pb2.WatchWorkersResponse] = []
        self.keepalives: list[registry_pb2.WatchWorkersResponse] = []
        self.call = stub.WatchWorkers(registry_pb2.WatchWorkersRequest(since_revision=since))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for message in self.call:
                if message.HasField("keepalive"):
                    self.keepalives.append(message)
                else:
                    self.messages.append(message)

    async def wait_for(self, count: int) -> list[registry_pb2.WatchWorkersResponse]:
        async def enough() -> bool:
            return len(self.messages) >= count

        await await_until(enough, timeout_s=10, what=f"{count} watch messages")
        return self.messages

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def details(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    metadata: Any = err.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no rich status details")


async def test_register_lists_ready_and_streams_to_watcher() -> None:
    async with registry() as (stub, _):
        watcher = StreamReader(stub)
        first = (await watcher.wait_for(1))[0]
        assert first.WhichOneof("update") == "snapshot"

        lease = await stub.Register(register_request("w1"), timeout=5)
        assert lease.lease_id and lease.ttl.ToMilliseconds() == 10_000
        await stub.Register(register_request("w2", model="big", zone="b"), timeout=5)
        listed = await stub.ListWorkers(
            registry_pb2.RegistryServiceListWorkersRequest(state=READY), timeout=5
        )
        assert [w.worker_id for w in listed.workers] == ["w1", "w2"]
        by_model = await stub.ListWorkers(
            registry_pb2.RegistryServiceListWorkersRequest(model="big"), timeout=5
        )
        assert [w.worker_id for w in by_model.workers] == ["w2"]
        by_label = await stub.ListWorkers(
            registry_pb2.RegistryServiceListWorkersRequest(
                labels=common_pb2.Labels(entries={"zone": "a"})
            ),
            timeout=5,
        )
        assert [w.worker_id for w in by_label.workers] == ["w1"]

        messages = await watcher.wait_for(3)
        assert messages[1].event.type == registry_pb2.WORKER_EVENT_TYPE_UPSERTED
        assert messages[1].event.worker.worker_id == "w1"
        assert messages[1].event.worker.state == READY
        assert messages[1].revision == lease.revision

        beat = await stub.Heartbeat(
            registry_pb2.HeartbeatRequest(
                worker_id="w1",
                lease_id=lease.lease_id,
                load=common_pb2.WorkerLoad(active_requests=2, free_slots=2),
                state=READY,
            ),
            timeout=5,
        )
        assert beat.state == READY and beat.ttl.ToMilliseconds() == 10_000
        drained = await stub.SetWorkerState(
            registry_pb2.SetWorkerStateRequest(worker_id="w1", state=DRAINING, reason="ops"),
            timeout=5,
        )
        assert drained.worker.state == DRAINING
        await stub.Deregister(registry_pb2.DeregisterRequest(worker_id="w2"), timeout=5)
        messages = await watcher.wait_for(6)
        assert messages[3].event.worker.load.active_requests == 2
        assert messages[4].event.worker.state == DRAINING
        assert messages[5].event.type == registry_pb2.WORKER_EVENT_TYPE_REMOVED
        assert [m.revision for m in messages[1:6]] == list(
            range(messages[1].revision, messages[1].revision + 5)
        )

        # Resume from the revision after the first event: the missed four, no snapshot.
        resumed = StreamReader(stub, since=messages[1].revision)
        replay = await resumed.wait_for(4)
        assert [m.WhichOneof("update") for m in replay] == ["event"] * 4
        assert [m.revision for m in replay] == [m.revision for m in messages[2:6]]
        await resumed.close()
        await watcher.close()


async def test_bad_requests_and_unknown_workers() -> None:
    async with registry() as (stub, _):
        bad = register_request("")
        bad.worker.address = "nowhere"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Register(bad, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = details(caught.value)
        fields = set()
        for any_detail in status.details:
            if any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                request = error_details_pb2.BadRequest()
                any_detail.Unpack(request)
                fields = {v.field for v in request.field_violations}
                rules = {v.reason for v in request.field_violations}
        assert fields == {"worker.worker_id", "worker.address"}
        assert rules == {"string.pattern"}  # the buf.validate rule ids from the contract

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Heartbeat(
                registry_pb2.HeartbeatRequest(worker_id="ghost", lease_id="x"), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SetWorkerState(registry_pb2.SetWorkerStateRequest(worker_id="w1"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        lease = await stub.Register(register_request("w1"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Heartbeat(
                registry_pb2.HeartbeatRequest(worker_id="w1", lease_id="old"), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert lease.lease_id != "old"


async def _readiness(channel: grpc.aio.Channel) -> int:
    health: Any = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=2)
    return int(reply.status)


async def test_readiness_follows_the_redis_backend() -> None:
    own: RedisServer = start_redis()
    try:
        async with registry(backend="redis", redis_url=own.url, redis_timeout_s=0.5) as (
            stub,
            channel,
        ):
            serving = int(health_pb2.HealthCheckResponse.SERVING)

            async def is_serving() -> bool:
                return await _readiness(channel) == serving

            async def not_serving() -> bool:
                return await _readiness(channel) != serving

            await await_until(is_serving, what="readiness SERVING")
            await stub.Register(register_request("w1"), timeout=5)
            own.stop()
            await await_until(not_serving, what="readiness NOT_SERVING with redis down")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Register(register_request("w2"), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        own.stop()


async def test_two_redis_replicas_agree(redis_server: RedisServer) -> None:
    shared = {
        "backend": "redis",
        "redis_url": redis_server.url,
        "redis_prefix": "{r-" + uuid.uuid4().hex[:8] + "}",
        "lease_ttl_ms": 400,
        "evict_after_ms": 60_000,
    }
    async with registry(**shared) as (stub_a, _), registry(**shared) as (stub_b, _):
        watch_a, watch_b = StreamReader(stub_a), StreamReader(stub_b)
        await watch_a.wait_for(1)
        await watch_b.wait_for(1)

        lease = await stub_a.Register(register_request("w1"), timeout=5)
        # A heartbeat through the other replica renews the same lease.
        beat = await stub_b.Heartbeat(
            registry_pb2.HeartbeatRequest(
                worker_id="w1",
                lease_id=lease.lease_id,
                load=common_pb2.WorkerLoad(active_requests=1),
                state=READY,
            ),
            timeout=5,
        )
        assert beat.revision == lease.revision + 1
        list_a = await stub_a.ListWorkers(registry_pb2.RegistryServiceListWorkersRequest())
        list_b = await stub_b.ListWorkers(registry_pb2.RegistryServiceListWorkersRequest())
        assert list_a == list_b and list_a.revision == beat.revision

        # w1 stops heartbeating: both replicas sweep, the change happens once.
        seen_a = await watch_a.wait_for(4)
        seen_b = await watch_b.wait_for(4)
        for seen in (seen_a, seen_b):
            assert [m.event.worker.state for m in seen[1:4]] == [READY, READY, UNHEALTHY]
            assert seen[3].event.worker.state_reason == "lease expired"
        assert [m.revision for m in seen_a[1:4]] == [m.revision for m in seen_b[1:4]]
        assert seen_a[1].revision == lease.revision
        await asyncio.sleep(0)  # give the streams a turn: no duplicate UNHEALTHY
        assert len(watch_a.messages) == len(watch_b.messages) == 4
        await watch_a.close()
        await watch_b.close()


async def test_watch_outlives_the_unary_default_deadline() -> None:
    """A WatchWorkers stream is long-lived; the 30 s unary default must not cut it."""
    async with registry(default_deadline_s=0.3) as (stub, _):
        watcher = StreamReader(stub)
        await watcher.wait_for(1)
        await asyncio.sleep(1.0)  # three unary default deadlines pass
        assert not watcher.call.done()
        await stub.Register(register_request("w1"), timeout=5)
        assert (await watcher.wait_for(2))[1].event.worker.worker_id == "w1"
        await watcher.close()


async def test_stopping_ends_watches_instead_of_waiting_out_the_grace_period() -> None:
    """An open WatchWorkers stream ends (OK) when the registry stops, so the drain does
    not wait for it (it never finishes by itself) and nothing has to be cancelled."""
    settings = RegistrySettings(port=0, readiness_interval_s=0.05)
    host = ServiceHost(settings, service_names=SERVICE_NAMES)
    async with wire(host, settings):
        await host.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub: Any = registry_pb2_grpc.RegistryServiceStub(channel)
            watcher = StreamReader(stub)
            await watcher.wait_for(1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await host.stop(60.0)
            # Far below the grace period (the old code waited all 60 s, then cancelled).
            assert loop.time() - started < 30
            assert await watcher.call.code() == grpc.StatusCode.OK
            await watcher.close()
