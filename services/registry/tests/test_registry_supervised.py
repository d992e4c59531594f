"""The registry's background loops under supervision: a crashing sweeper is restarted
(leases keep expiring), and one that cannot recover fails ``liveness``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.server import ServiceHost
from llmesh.kernel.tasks import RestartPolicy, Supervisor
from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_registry.backend import RegistryBackend
from llmesh_registry.settings import RegistrySettings
from llmesh_registry.wiring import SERVICE_NAMES, wire

FAST = RestartPolicy(min_backoff_s=0.01, max_backoff_s=0.05, max_crashes=3, stable_after_s=0.5)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Registry:
    def __init__(
        self, stub: registry_pb2_grpc.RegistryServiceAsyncStub, channel: grpc.aio.Channel
    ) -> None:
        self.stub = stub
        self.health = health_pb2_grpc.HealthStub(channel)

    async def liveness(self) -> int:
        reply = await self.health.Check(
            health_pb2.HealthCheckRequest(service="liveness"), timeout=2
        )
        return int(reply.status)

    async def state(self, worker_id: str) -> int:
        reply = await self.stub.ListWorkers(
            registry_pb2.RegistryServiceListWorkersRequest(), timeout=2
        )
        return next((w.state for w in reply.workers if w.worker_id == worker_id), -1)


@contextlib.asynccontextmanager
async def registry(fault: Callable[[RegistryBackend], None]) -> AsyncIterator[Registry]:
    """A real registry on port 0 whose backend ``fault`` tampers with (on the instance)."""
    settings = RegistrySettings(port=0, lease_ttl_ms=300, evict_after_ms=60_000)

    @contextlib.asynccontextmanager
    async def faulty(host: ServiceHost) -> AsyncIterator[RegistryBackend]:
        supervisor = Supervisor(health=host.health, policy=FAST)
        async with wire(host, settings, supervisor=supervisor) as backend:
            fault(backend)
            yield backend

    async with serving(settings, SERVICE_NAMES, faulty, grace_s=0.5) as served:
        channel = grpc.aio.insecure_channel(served.address)
        try:
            yield Registry(registry_pb2_grpc.RegistryServiceStub(channel), channel)  # type: ignore[arg-type]
        finally:
            await channel.close(None)


def register(worker_id: str) -> registry_pb2.RegisterRequest:
    return registry_pb2.RegisterRequest(
        worker=common_pb2.WorkerInfo(
            worker_id=worker_id, address="127.0.0.1:50054", state=common_pb2.WORKER_STATE_READY
        )
    )


async def test_a_crashing_sweeper_is_restarted_and_leases_still_expire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashes = 0

    def crash_twice(backend: RegistryBackend) -> None:
        sweep = backend.sweep

        async def flaky() -> int:
            nonlocal crashes
            if crashes < 2:
                crashes += 1
                raise RuntimeError("sweeper bug")
            return await sweep()

        backend.sweep = flaky  # type: ignore[method-assign]

    with caplog.at_level(logging.ERROR, logger="llmesh.tasks"):
        async with registry(crash_twice) as reg:
            await reg.stub.Register(register("w1"), timeout=5)
            # No heartbeats: the 300 ms lease lapses, and the restarted sweeper sees it.
            await await_until(
                lambda: _equals(reg.state("w1"), common_pb2.WORKER_STATE_UNHEALTHY),
                timeout_s=10,
                what="lease expiry after the sweeper crashed",
            )
            assert crashes == 2
            assert await reg.liveness() == SERVING  # two crashes: recovered, not hopeless
    logged = [r for r in caplog.records if "registry-sweeper crashed" in r.getMessage()]
    assert len(logged) == 2 and logged[0].exc_info is not None


async def test_a_sweeper_that_keeps_crashing_fails_liveness() -> None:
    def always_crash(backend: RegistryBackend) -> None:
        async def broken() -> int:
            raise RuntimeError("sweeper bug")

        backend.sweep = broken  # type: ignore[method-assign]

    async with registry(always_crash) as reg:
        await await_until(
            lambda: _equals(reg.liveness(), NOT_SERVING),
            timeout_s=10,
            what="liveness NOT_SERVING",
        )


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
