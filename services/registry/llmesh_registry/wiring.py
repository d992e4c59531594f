"""Wires a registry replica: backend, sweeper, readiness and the servicer on a host."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from llmesh.kernel.server import ServiceHost
from llmesh.v1 import registry_pb2_grpc
from llmesh_registry.backend import RegistryBackend
from llmesh_registry.memory_backend import MemoryBackend
from llmesh_registry.metrics import WorkerGauge
from llmesh_registry.model import LeasePolicy
from llmesh_registry.redis_backend import RedisBackend
from llmesh_registry.servicer import RegistryServicer
from llmesh_registry.settings import RegistrySettings
from llmesh_registry.sweeper import sweep_forever, watch_readiness
from llmesh_registry.watch import WatchHub


def build_backend(settings: RegistrySettings) -> RegistryBackend:
    """The backend named by ``settings.backend``."""
    policy = LeasePolicy(ttl_ms=settings.lease_ttl_ms, evict_after_ms=settings.evict_after_ms)
    hub = WatchHub(max_queue=settings.watch_queue)
    if settings.backend == "redis":
        return RedisBackend(
            policy,
            url=settings.redis_url,
            prefix=settings.redis_prefix,
            hub=hub,
            history=settings.history,
            op_timeout_s=settings.redis_timeout_s,
        )
    return MemoryBackend(policy, hub=hub, history=settings.history)


@contextlib.asynccontextmanager
async def registry_service(
    host: ServiceHost, settings: RegistrySettings, backend: RegistryBackend | None = None
) -> AsyncIterator[RegistryBackend]:
    """Start the backend and background tasks, add the servicer to ``host``."""
    backend = backend or build_backend(settings)
    await backend.start()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(backend), host.server)
    tasks = [
        asyncio.create_task(
            sweep_forever(backend, interval_s=settings.effective_sweep_interval_s),
            name="registry-sweeper",
        ),
        asyncio.create_task(
            watch_readiness(
                backend, host.health.set_ready, interval_s=settings.readiness_interval_s
            ),
            name="registry-readiness",
        ),
        asyncio.create_task(
            WorkerGauge().refresh_forever(backend, interval_s=5.0), name="registry-gauge"
        ),
    ]
    try:
        yield backend
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await backend.close()
