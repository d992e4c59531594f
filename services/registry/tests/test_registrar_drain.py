"""The registrar and a draining worker (issue 19, finding 4): a worker that says it is
draining (readiness NOT_SERVING, liveness SERVING, ``Stats.draining``) is reported
DRAINING, not UNHEALTHY; and when the registrar itself is stopped (SIGTERM in the same
pod) it keeps the registration DRAINING while the worker still has work, even though the
worker is not ready, and deregisters once the worker's port is closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from llmesh.kernel.health import HealthReporter
from llmesh.kernel.tasks import Supervisor
from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc, registry_pb2, registry_pb2_grpc
from llmesh_registry.probe import WorkerProbe
from llmesh_registry.registrar import Registrar, WorkerIdentity
from llmesh_registry.settings import RegistrySettings
from llmesh_registry.wiring import SERVICE_NAMES, wire

READY = common_pb2.WORKER_STATE_READY
DRAINING = common_pb2.WORKER_STATE_DRAINING
UNHEALTHY = common_pb2.WORKER_STATE_UNHEALTHY
GONE = -1


@dataclass
class Load:
    active: int = 0
    draining: bool = False


class FakeStats(inference_pb2_grpc.InferenceServiceServicer):
    """``Stats`` with the figures the test sets."""

    def __init__(self, load: Load) -> None:
        self.load = load

    async def Stats(self, request: Any, context: Any) -> inference_pb2.StatsResponse:
        return inference_pb2.StatsResponse(
            active_requests=self.load.active, max_batch_size=4, draining=self.load.draining
        )


@dataclass
class FakeWorker:
    health: HealthReporter
    load: Load
    server: grpc.aio.Server
    address: str

    async def start_draining(self, active: int) -> None:
        """What a worker does on SIGTERM: not ready, alive, Stats.draining."""
        self.load.active, self.load.draining = active, True
        await self.health.set_ready(False)


@contextlib.asynccontextmanager
async def fake_worker() -> AsyncIterator[FakeWorker]:
    health = HealthReporter(["llmesh.v1.InferenceService"])
    await health.set_ready(True)
    load = Load()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(FakeStats(load), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield FakeWorker(health, load, server, f"127.0.0.1:{port}")
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def registrar_on(worker: FakeWorker) -> AsyncIterator[tuple[Registrar, Any]]:
    settings = RegistrySettings(port=0, lease_ttl_ms=3000, evict_after_ms=60_000)
    async with serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served:
        registry_channel = grpc.aio.insecure_channel(served.address)
        worker_channel = grpc.aio.insecure_channel(worker.address)
        stub: Any = registry_pb2_grpc.RegistryServiceStub(registry_channel)
        registrar = Registrar(
            WorkerIdentity(worker_id="w1", address=worker.address, labels={}),
            WorkerProbe(worker_channel, timeout_s=1.0),
            stub,
            heartbeat_interval_s=0.4,  # each probe may take up to half of it
            wait_interval_s=0.05,
        )
        try:
            yield registrar, stub
        finally:
            await worker_channel.close(None)
            await registry_channel.close(None)


async def state(stub: Any) -> int:
    reply = await stub.ListWorkers(registry_pb2.RegistryServiceListWorkersRequest(), timeout=2)
    states = [int(w.state) for w in reply.workers if w.worker_id == "w1"]
    return states[0] if states else GONE


async def test_a_draining_worker_is_reported_draining_not_unhealthy() -> None:
    async with fake_worker() as worker, registrar_on(worker) as (registrar, stub):
        supervisor = Supervisor()
        supervisor.spawn("registrar", registrar.run)
        try:
            await await_until(lambda: _is(stub, READY), timeout_s=10, what="READY")
            await worker.start_draining(active=2)
            await await_until(lambda: _is(stub, DRAINING), timeout_s=10, what="DRAINING")
            # It stays DRAINING over heartbeats (the old registrar: UNHEALTHY).
            for _ in range(4):
                await asyncio.sleep(0.4)
                assert await state(stub) == DRAINING
        finally:
            await supervisor.stop()


async def test_a_stopped_registrar_keeps_the_worker_draining_until_its_port_closes() -> None:
    async with fake_worker() as worker, registrar_on(worker) as (registrar, stub):
        supervisor = Supervisor()
        supervisor.spawn("registrar", registrar.run)
        await await_until(lambda: _is(stub, READY), timeout_s=10, what="READY")
        # Worker and registrar get SIGTERM together: the worker drains 2 streams.
        await worker.start_draining(active=2)
        await supervisor.stop()
        drain = asyncio.ensure_future(registrar.drain(timeout_s=60))
        await await_until(lambda: _is(stub, DRAINING), timeout_s=10, what="DRAINING")
        # Not ready, still working: well past the old registrar's 0.37 s it stays.
        await asyncio.sleep(1.0)
        assert not drain.done()
        assert await state(stub) == DRAINING
        # The worker finishes and exits (its port closes): deregistered.
        await worker.server.stop(0)
        await asyncio.wait_for(drain, 30)
        assert await state(stub) == GONE


async def test_a_stopped_registrar_deregisters_an_idle_draining_worker_at_once() -> None:
    async with fake_worker() as worker, registrar_on(worker) as (registrar, stub):
        supervisor = Supervisor()
        supervisor.spawn("registrar", registrar.run)
        await await_until(lambda: _is(stub, READY), timeout_s=10, what="READY")
        await worker.start_draining(active=0)
        await supervisor.stop()
        await asyncio.wait_for(registrar.drain(timeout_s=60), 10)
        assert await state(stub) == GONE


async def _is(stub: Any, wanted: int) -> bool:
    return await state(stub) == wanted


async def test_a_drain_heartbeat_to_a_registry_that_forgot_the_worker_registers_draining() -> None:
    """After a registry restart the worker is unknown: the drain re-registers it
    DRAINING, never READY or UNHEALTHY (a stopping worker must not get traffic)."""
    async with fake_worker() as worker, registrar_on(worker) as (registrar, stub):
        result = await registrar.wait_for_worker()
        await registrar.register(result)
        assert await state(stub) == READY
        await stub.Deregister(
            registry_pb2.DeregisterRequest(worker_id="w1", lease_id=registrar._lease_id),
            timeout=5,
        )
        assert await state(stub) == GONE
        await worker.start_draining(active=1)
        await registrar.heartbeat(await registrar._probe.probe(), state=DRAINING)
        assert await state(stub) == DRAINING
