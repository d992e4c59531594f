"""The registrar probes the worker's liveness, not only its readiness: a worker whose
liveness fails (a dead or stalled MLX thread, a loop that cannot recover) is reported
UNHEALTHY to a real registry, and READY again once it recovers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
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
UNHEALTHY = common_pb2.WORKER_STATE_UNHEALTHY


class StatsOnly(inference_pb2_grpc.InferenceServiceServicer):
    """The part of the inference contract a registrar uses."""

    async def Stats(self, request: Any, context: Any) -> inference_pb2.StatsResponse:
        return inference_pb2.StatsResponse()


@contextlib.asynccontextmanager
async def fake_worker() -> AsyncIterator[tuple[HealthReporter, str]]:
    """A real gRPC server with the standard health service and ``Stats``."""
    health = HealthReporter(["llmesh.v1.InferenceService"])
    await health.set_ready(True)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(StatsOnly(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield health, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def registry() -> AsyncIterator[grpc.aio.Channel]:
    settings = RegistrySettings(port=0, lease_ttl_ms=3000, evict_after_ms=60_000)
    async with serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served:
        channel = grpc.aio.insecure_channel(served.address)
        try:
            yield channel
        finally:
            await channel.close(None)


async def test_a_worker_whose_liveness_fails_is_reported_unhealthy() -> None:
    async with fake_worker() as (worker_health, address), registry() as registry_channel:
        stub: Any = registry_pb2_grpc.RegistryServiceStub(registry_channel)
        worker_channel = grpc.aio.insecure_channel(address)
        registrar = Registrar(
            WorkerIdentity(worker_id="w1", address=address, labels={}),
            WorkerProbe(worker_channel, timeout_s=1.0),
            stub,
            heartbeat_interval_s=0.05,
            wait_interval_s=0.05,
        )
        supervisor = Supervisor()
        supervisor.spawn("registrar", registrar.run)

        async def state() -> tuple[int, str]:
            reply = await stub.ListWorkers(
                registry_pb2.RegistryServiceListWorkersRequest(), timeout=2
            )
            for w in reply.workers:
                if w.worker_id == "w1":
                    return int(w.state), str(w.state_reason)
            return -1, ""

        async def state_is(wanted: int) -> bool:
            return (await state())[0] == wanted

        try:
            await await_until(lambda: state_is(READY), timeout_s=10, what="READY")
            # The worker still says it is ready, but a part of it cannot make progress.
            await worker_health.set_live(False, part="mlx")
            assert worker_health.ready
            await await_until(lambda: state_is(UNHEALTHY), timeout_s=10, what="UNHEALTHY")
            assert "liveness is NOT_SERVING" in (await state())[1]
            await worker_health.set_live(True, part="mlx")
            await await_until(lambda: state_is(READY), timeout_s=10, what="READY again")
        finally:
            await supervisor.stop()
            await worker_channel.close(None)
