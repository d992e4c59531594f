"""Wiring: the memory service's parts on a ``ServiceHost`` (used by ``app.py`` and tests).

Every service package has a ``wiring.py`` with ``SERVICE_NAMES`` and ``wire(host, settings)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh.kernel.server import ServiceHost

from .settings import MemorySettings

if TYPE_CHECKING:
    from .store.base import MemoryStore

SERVICE_NAMES = ("llmesh.v1.MemoryService",)
log = get_logger(__name__)


def build_store(settings: MemorySettings) -> MemoryStore:
    """The configured store, with the Redis session cache in front when set."""
    store: MemoryStore
    if settings.store == "postgres":
        from .store.postgres import PostgresStore

        store = PostgresStore(
            settings.resolved_postgres_dsn(),
            min_size=settings.postgres_pool_min,
            max_size=settings.postgres_pool_max,
            ef_search=settings.hnsw_ef_search,
            exact_search_max_rows=settings.exact_search_max_rows,
            statement_timeout_s=settings.statement_timeout_s,
        )
    else:
        from .store.sqlite import SqliteStore

        store = SqliteStore(settings.resolved_sqlite_path(), readers=settings.sqlite_readers)
    if settings.redis_url:
        from .store.redis_cache import RedisSessionCache

        store = RedisSessionCache(store, settings.redis_url, ttl_s=settings.session_cache_ttl_s)
    return store


async def _watch_readiness(
    host: ServiceHost, store: MemoryStore, every_s: float, *, started: bool
) -> None:
    """Readiness follows the store: SERVING while it answers a ping."""
    while True:
        try:
            if not started:
                await store.start()
                started = True
            await store.ping()
            ready = True
        except (LlmeshError, OSError) as exc:
            log.warning("memory store not ready: %s", exc)
            ready = False
        if ready != host.health.ready:
            await host.health.set_ready(ready)
        await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def wire(host: ServiceHost, settings: MemorySettings) -> AsyncIterator[None]:
    """Register the servicer on ``host``; own the store, embedder and background tasks."""
    from llmesh.v1 import memory_pb2_grpc

    from .embedder import Embedder, GrpcEmbedder, NoEmbedder
    from .engine import MemoryEngine
    from .servicer import MemoryServicer

    store = build_store(settings)
    embedder: Embedder = (
        GrpcEmbedder(
            settings.embedder_target,
            model=settings.embedding_model,
            timeout_s=settings.embed_timeout_s,
            cooldown_s=settings.embedder_cooldown_s,
            tls=settings.client_tls if settings.client_tls.enabled else None,
        )
        if settings.embedder_target
        else NoEmbedder()
    )
    engine = MemoryEngine(
        store,
        embedder,
        candidate_pool=settings.candidate_pool,
        default_session_ttl_s=settings.session_ttl_s,
    )
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(engine), host.server)
    stop = asyncio.Event()
    started = False
    try:
        await store.start()
        started = True
        await host.health.set_ready(True)
    except LlmeshError as exc:
        log.warning("memory store unavailable at start, retrying: %s", exc)
    tasks = [
        asyncio.create_task(
            _watch_readiness(host, store, settings.readiness_interval_s, started=started)
        ),
        asyncio.create_task(
            engine.run_maintenance(
                stop,
                backfill_every_s=settings.backfill_interval_s,
                purge_every_s=settings.purge_interval_s,
            )
        ),
    ]
    try:
        yield
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await embedder.close()
        await store.close()
