"""Wiring: the memory service's parts on a ``ServiceHost`` (used by ``app.py`` and tests).

Every service package has a ``wiring.py`` with ``SERVICE_NAMES`` and ``wire(host, settings)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from llmesh.kernel.channels import create_channel
from llmesh.kernel.config import ConfigError
from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh.kernel.registry_watch import RegistryCache, RegistryWatcher
from llmesh.kernel.server import ServiceHost
from llmesh.kernel.tasks import Supervisor

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
            ef_search_min=settings.hnsw_ef_search_min,
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


def check_local_model(model_dir: Path | None) -> None:
    """``ConfigError`` naming what to install when the in-process embedder has no model."""
    try:
        from llmesh.embeddings import model_files
    except ImportError as exc:  # no MLX in this image
        raise ConfigError(f"local_embedder needs MLX (install mlx[cpu]): {exc}") from None
    try:
        model_files(model_dir)
    except LlmeshError as exc:
        raise ConfigError(f"local_embedder: {exc.message}") from None


class StoreReadiness:
    """Readiness follows the store: SERVING while it answers a ping.

    A store that was down at start is started here once it answers. Outages are
    expected (readiness NOT_SERVING, a warning); anything else is a crash for the
    supervisor, and a restarted loop remembers whether the store was started.
    """

    def __init__(self, host: ServiceHost, store: MemoryStore, every_s: float, *, started: bool):
        self._host = host
        self._store = store
        self._every_s = every_s
        self.started = started

    async def run(self) -> None:
        while True:
            try:
                if not self.started:
                    await self._store.start()
                    self.started = True
                await self._store.ping()
                ready = True
            except (LlmeshError, OSError) as exc:
                log.warning("memory store not ready: %s", exc)
                ready = False
            if ready != self._host.health.ready:
                await self._host.health.set_ready(ready)
            await asyncio.sleep(self._every_s)


@contextlib.asynccontextmanager
async def wire(
    host: ServiceHost,
    settings: MemorySettings,
    *,
    store: MemoryStore | None = None,
    supervisor: Supervisor | None = None,
) -> AsyncIterator[None]:
    """Register the servicer on ``host``; own the store, embedder and supervised loops.

    ``store`` and ``supervisor`` replace the configured ones (tests inject faults).
    """
    from llmesh.v1 import memory_pb2_grpc

    from .embedder import (
        Embedder,
        GrpcEmbedder,
        LocalEmbedder,
        NoEmbedder,
        RegistryTargets,
        Targets,
    )
    from .engine import MemoryEngine
    from .servicer import MemoryServicer

    store = store or build_store(settings)
    tls = settings.client_tls if settings.client_tls.enabled else None
    supervisor = supervisor or Supervisor(health=host.health)
    registry_channel: grpc.aio.Channel | None = None
    targets: Targets | str | None = settings.embedder_target or None
    local: LocalEmbedder | None = None
    if settings.local_embedder:
        check_local_model(settings.local_embedder_dir)
        local = LocalEmbedder(
            model_dir=settings.local_embedder_dir, cache_size=settings.embed_cache_size
        )
    elif settings.embedder_registry:
        registry_channel = create_channel(settings.embedder_registry, tls=tls)
        cache = RegistryCache()
        RegistryWatcher(registry_channel, cache, metric_prefix="memory").start(supervisor)
        targets = RegistryTargets(
            cache, model=settings.embedding_model, cooldown_s=settings.embedder_cooldown_s
        )
    embedder: Embedder
    if local is not None:
        embedder = local
    elif targets is not None:
        embedder = GrpcEmbedder(
            targets,
            model=settings.embedding_model,
            timeout_s=settings.embed_timeout_s,
            cooldown_s=settings.embedder_cooldown_s,
            tls=tls,
            cache_size=settings.embed_cache_size,
        )
    else:
        embedder = NoEmbedder()
    engine = MemoryEngine(
        store,
        embedder,
        candidate_pool=settings.candidate_pool,
        default_session_ttl_s=settings.session_ttl_s,
    )
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(engine), host.server)
    stop = asyncio.Event()
    started = False
    if local is not None:
        await local.start()  # load the model before the first query
    try:
        await store.start()
        started = True
        await host.health.set_ready(True)
    except LlmeshError as exc:
        log.warning("memory store unavailable at start, retrying: %s", exc)
    readiness = StoreReadiness(host, store, settings.readiness_interval_s, started=started)
    supervisor.spawn("memory-readiness", readiness.run)
    supervisor.spawn(
        "memory-maintenance",
        lambda: engine.run_maintenance(
            stop,
            backfill_every_s=settings.backfill_interval_s,
            purge_every_s=settings.purge_interval_s,
        ),
    )
    try:
        yield
    finally:
        stop.set()
        await supervisor.stop()
        await embedder.close()
        if registry_channel is not None:
            await registry_channel.close(None)
        await store.close()
