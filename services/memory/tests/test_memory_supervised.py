"""Memory's background loops under supervision, on a real server and a real SQLite store:
a readiness loop that keeps crashing fails ``liveness``; a crashed back-fill is restarted."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.server import ServiceHost
from llmesh.kernel.tasks import RestartPolicy, Supervisor
from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh_memory.settings import MemorySettings
from llmesh_memory.store.base import MemoryStore, PendingEmbedding
from llmesh_memory.wiring import SERVICE_NAMES, build_store, wire

FAST = RestartPolicy(min_backoff_s=0.01, max_backoff_s=0.05, max_crashes=3, stable_after_s=30)


@contextlib.asynccontextmanager
async def memory(store: MemoryStore, settings: MemorySettings) -> AsyncIterator[ServiceHost]:
    def supervised(host: ServiceHost) -> AbstractAsyncContextManager[object]:
        supervisor = Supervisor(health=host.health, policy=FAST)
        return wire(host, settings, store=store, supervisor=supervisor)

    async with serving(settings, SERVICE_NAMES, supervised) as served:
        yield served.host


async def liveness(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="liveness"), timeout=2
        )
    return int(reply.status)


async def test_a_readiness_loop_that_keeps_crashing_fails_liveness(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = MemorySettings(port=0, sqlite_path=tmp_path / "m.db", readiness_interval_s=0.02)
    store = build_store(settings)

    async def broken_ping() -> None:
        raise RuntimeError("ping bug")  # not an outage: a crash

    store.ping = broken_ping  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR, logger="llmesh.tasks"):
        async with memory(store, settings) as host:
            port = host.port or 0

            async def down() -> bool:
                return bool(await liveness(port) == health_pb2.HealthCheckResponse.NOT_SERVING)

            await await_until(down, timeout_s=10, what="liveness NOT_SERVING")
            assert host.health.down == ("memory-readiness",)
    crashes = [r for r in caplog.records if "memory-readiness crashed" in r.getMessage()]
    assert len(crashes) >= 3 and crashes[0].exc_info is not None


async def test_a_crashed_back_fill_is_logged_with_its_stack_and_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = MemorySettings(port=0, sqlite_path=tmp_path / "m.db", backfill_interval_s=0.02)
    store = build_store(settings)
    pending = store.pending_embeddings
    calls = 0

    async def flaky(*, limit: int) -> list[PendingEmbedding]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("back-fill bug")
        return await pending(limit=limit)

    store.pending_embeddings = flaky  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR, logger="llmesh.tasks"):
        async with memory(store, settings) as host:
            await await_until(_after(lambda: calls >= 3), timeout_s=10, what="back-fill restarted")
            assert host.health.live  # one crash is not hopeless
    crashes = [r for r in caplog.records if "memory-maintenance crashed" in r.getMessage()]
    assert len(crashes) == 1 and crashes[0].exc_info is not None


def _after(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check
