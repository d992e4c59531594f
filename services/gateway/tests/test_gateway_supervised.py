"""The registry watch under supervision, against a real registry: a crash in the watch
loop is logged, staleness grows from the crash until the restarted loop reconnects,
and a loop that keeps crashing fails the gateway's liveness."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from llmesh.kernel.channels import create_channel
from llmesh.kernel.health import HealthReporter
from llmesh.kernel.tasks import RestartPolicy, Supervisor
from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_gateway.registry_cache import RegistryCache, RegistryWatcher


@contextlib.asynccontextmanager
async def registry() -> AsyncIterator[str]:
    from llmesh_registry.settings import RegistrySettings
    from llmesh_registry.wiring import SERVICE_NAMES, wire

    settings = RegistrySettings(port=0, lease_ttl_ms=600_000, evict_after_ms=600_000)
    async with serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served:
        await register(served.address, "a")
        yield served.address


async def register(address: str, worker_id: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await registry_pb2_grpc.RegistryServiceStub(channel).Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id=worker_id, address="127.0.0.1:1", state=common_pb2.WORKER_STATE_READY
                )
            ),
            timeout=5,
        )


async def _true(value: bool) -> bool:
    return value


async def test_a_crashed_watch_counts_staleness_and_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = RegistryCache()
    calls = 0

    async def on_change(_cache: RegistryCache) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("routing table bug")

    health = HealthReporter([])
    # A long first backoff so the gap between crash and restart is observable.
    policy = RestartPolicy(min_backoff_s=1.0, max_backoff_s=1.0, max_crashes=3)
    supervisor = Supervisor(health=health, policy=policy)
    async with registry() as address:
        channel = create_channel(address)
        watcher = RegistryWatcher(channel, cache, on_change=on_change)
        try:
            with caplog.at_level(logging.ERROR, logger="llmesh.tasks"):
                watcher.start(supervisor)
                # Crashed on the first snapshot: the cache is not live, staleness grows.
                await await_until(lambda: _true(calls == 1 and not cache.connected), what="crash")
                assert "a" in cache.workers  # the last snapshot is kept
                before = cache.staleness_s
                await await_until(lambda: _true(cache.staleness_s > before + 0.1), what="staleness")
                # A change while the loop is down; the restarted loop resumes from its
                # revision, gets it, and the cache is live again.
                await register(address, "b")
                await await_until(
                    lambda: _true(cache.connected and "b" in cache.workers),
                    timeout_s=10,
                    what="reconnect",
                )
                assert cache.staleness_s == 0 and health.live
            logged = [r for r in caplog.records if "registry-watch crashed" in r.getMessage()]
            assert len(logged) == 1 and logged[0].exc_info is not None
        finally:
            await watcher.stop()
            await channel.close(None)


async def test_a_watch_that_keeps_crashing_fails_liveness() -> None:
    cache = RegistryCache()

    health = HealthReporter([])
    policy = RestartPolicy(min_backoff_s=0.01, max_backoff_s=0.05, max_crashes=3)
    async with registry() as address:
        channel = create_channel(address)
        watcher = RegistryWatcher(channel, cache)

        def broken(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("stub bug")

        watcher._stub.WatchWorkers = broken  # type: ignore[method-assign,assignment]
        try:
            watcher.start(Supervisor(health=health, policy=policy))
            await await_until(lambda: _true(not health.live), timeout_s=10, what="liveness down")
            assert health.down == ("registry-watch",)
            assert cache.staleness_s > 0
        finally:
            await watcher.stop()
            await channel.close(None)
