"""The registry watch against a real registry: snapshot, events, the registry going away
(last snapshot kept, staleness grows) and coming back (reconnect, fresh snapshot)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from llmesh.kernel.channels import create_channel
from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_gateway.registry_cache import RegistryCache, RegistryWatcher


@contextlib.asynccontextmanager
async def registry(port: int, warmup_ms: int = 0) -> AsyncIterator[str]:
    from llmesh_registry.settings import RegistrySettings
    from llmesh_registry.wiring import SERVICE_NAMES, wire

    settings = RegistrySettings(
        port=port, lease_ttl_ms=600_000, evict_after_ms=600_000, warmup_ms=warmup_ms
    )
    async with serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served:
        yield served.address


async def register(address: str, worker_id: str, state: int = 2) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await registry_pb2_grpc.RegistryServiceStub(channel).Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id=worker_id,
                    address="127.0.0.1:1",
                    models_loaded=["m"],
                    state=state,  # type: ignore[arg-type]
                )
            )
        )


async def _true(value: bool) -> bool:
    return value


async def test_watch_survives_a_registry_restart() -> None:
    port = free_port()
    cache = RegistryCache()
    changes: list[bool] = []

    async def on_change(current: RegistryCache) -> None:
        changes.append(current.routable())

    channel = create_channel(f"127.0.0.1:{port}")
    watcher = RegistryWatcher(channel, cache, on_change=on_change, max_backoff_s=0.2)
    try:
        async with registry(port) as address:
            await register(address, "a")
            watcher.start()
            await await_until(lambda: _true("a" in cache.workers), what="snapshot")
            await register(address, "b", state=common_pb2.WORKER_STATE_STARTING)
            await await_until(lambda: _true("b" in cache.workers), what="event")
            assert cache.staleness_s == 0 and cache.routable() and changes
        # The registry is gone: the last snapshot stays, staleness grows.
        await await_until(lambda: _true(cache.staleness_s > 0), what="staleness")
        assert set(cache.workers) == {"a", "b"}
        # A new registry (fresh state) on the same address: the watcher reconnects. While
        # the registry warms up (its registrars registering again), the old workers it
        # lacks are kept; once warm, its complete snapshot replaces the old view.
        async with registry(port, warmup_ms=4000) as address:
            await register(address, "c")
            await await_until(lambda: _true("c" in cache.workers), timeout_s=10, what="resnapshot")
            assert cache.warming and set(cache.workers) == {"a", "b", "c"}
            assert cache.held == {"a", "b"} and cache.routable()
            await await_until(
                lambda: _true(set(cache.workers) == {"c"}), timeout_s=20, what="warmed up"
            )
            assert not cache.warming and not cache.held
            assert cache.connected and cache.staleness_s == 0
    finally:
        await watcher.stop()
        await channel.close(None)
