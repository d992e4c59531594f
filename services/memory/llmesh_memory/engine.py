"""Domain logic of the memory service: remember, recall (hybrid), forget, sessions.

Transport-free: the gRPC servicer validates and converts messages, this module
decides. Embeddings come from an :class:`~llmesh_memory.embedder.Embedder`; when it
fails, memories are stored without a vector (back-filled by :meth:`backfill_once`)
and searches run keyword-only, marked degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from llmesh.kernel.errors import LlmeshError, NotFound
from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import meter, tracer
from llmesh.kernel.timestamps import expiry

from .embedder import Embedder, EmbedderUnavailable
from .scoring import (
    DEFAULT_KEYWORD_WEIGHT,
    DEFAULT_SEMANTIC_WEIGHT,
    Fusion,
    Scored,
    fuse,
    keyword_score,
)
from .store.base import (
    AppendResult,
    MemoryRecord,
    MemoryStore,
    MessageIn,
    NewMemory,
    RememberResult,
    SearchQuery,
    SessionRecord,
    StoredAppend,
    StoredMessage,
    Vector,
)
from .text import dedupe_key, index_terms, query_terms

log = get_logger(__name__)


class _Metrics:
    """The service's domain instruments (created per engine, not at import)."""

    def __init__(self) -> None:
        m = meter("llmesh.memory")
        self.recall_seconds = m.create_histogram(
            "llmesh_memory_recall_seconds", unit="s", description="Recall latency by mode"
        )
        self.degraded = m.create_counter(
            "llmesh_memory_recall_degraded_total", description="Recalls run keyword-only"
        )
        self.backfilled = m.create_counter(
            "llmesh_memory_backfilled_total", description="Memory vectors back-filled"
        )


@dataclass(frozen=True, slots=True)
class RecallParams:
    """A search request after validation."""

    query: str
    k: int = 5
    min_score: float = 0.0
    mode: Fusion = Fusion.WEIGHTED
    semantic_weight: float = DEFAULT_SEMANTIC_WEIGHT
    keyword_weight: float = DEFAULT_KEYWORD_WEIGHT
    metadata_filter: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """One result: the memory, its combined score and both components."""

    memory: MemoryRecord
    score: float
    semantic: float
    keyword: float


@dataclass(frozen=True, slots=True)
class RecallOutcome:
    """Hits, best first, and whether the search ran keyword-only."""

    hits: list[Hit]
    degraded: bool = False
    degraded_reason: str = ""


async def _vector_of(embedding: asyncio.Future[tuple[Vector | None, str]]) -> Vector | None:
    return (await embedding)[0]


class MemoryEngine:
    """Sessions and long-term memory over one store and one embedder."""

    def __init__(
        self,
        store: MemoryStore,
        embedder: Embedder,
        *,
        candidate_pool: int = 50,
        default_session_ttl_s: float = 0.0,
        backfill_batch: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.candidate_pool = candidate_pool
        self.default_session_ttl_s = default_session_ttl_s
        self.backfill_batch = backfill_batch
        self.clock = clock
        self._metrics = _Metrics()
        self._tracer = tracer("llmesh.memory")

    # -- sessions -----------------------------------------------------------------

    async def append(
        self,
        namespace: str,
        session_id: str,
        messages: Sequence[MessageIn],
        *,
        expected_version: int,
        idempotency_key: str = "",
        ttl_s: float = 0.0,
        request_fingerprint: str = "",
        annotations: Mapping[str, str] | None = None,
    ) -> AppendResult:
        ttl = ttl_s or self.default_session_ttl_s
        return await self.store.append_messages(
            namespace,
            session_id,
            messages,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
            ttl_s=ttl or None,
            now=self.clock(),
            request_fingerprint=request_fingerprint,
            annotations=annotations,
        )

    async def get_append(self, namespace: str, idempotency_key: str) -> StoredAppend:
        """What the append with ``idempotency_key`` stored; ``NotFound`` when nothing."""
        stored = await self.store.get_append(namespace, idempotency_key)
        if stored is None:
            raise NotFound(
                "no append with this idempotency_key (or it expired)", reason="APPEND_NOT_FOUND"
            )
        return stored

    async def get_session(
        self, namespace: str, session_id: str, *, limit: int
    ) -> tuple[SessionRecord, list[StoredMessage]]:
        return await self.store.get_session(namespace, session_id, limit=limit, now=self.clock())

    async def list_sessions(
        self, namespace: str, *, page_size: int, after: tuple[float, str] | None
    ) -> list[SessionRecord]:
        return await self.store.list_sessions(
            namespace, page_size=page_size, after=after, now=self.clock()
        )

    async def delete_session(self, namespace: str, session_id: str) -> int:
        return await self.store.delete_session(namespace, session_id)

    # -- memories -------------------------------------------------------------------

    async def remember(
        self,
        namespace: str,
        text: str,
        *,
        metadata: Mapping[str, str] | None = None,
        ttl_s: float = 0.0,
        idempotency_key: str = "",
    ) -> RememberResult:
        """Store a memory; its vector now if the embedder answers, else later.

        ``InvalidArgument`` (field ``ttl``) before anything else when the memory would
        expire after year 9999.
        """
        expiry(self.clock(), ttl_s)
        vector = None
        try:
            with self._tracer.start_as_current_span("memory.embed"):
                vector = (await self.embedder.embed([text]))[0]
        except EmbedderUnavailable as exc:
            log.info("storing memory without a vector (back-fill later): %s", exc)
        now = self.clock()
        memory = NewMemory(
            text=text,
            dedupe_key=dedupe_key(namespace, text),
            metadata=dict(metadata or {}),
            terms=index_terms(text),
            vector=vector,
            expires_at=expiry(now, ttl_s),
            idempotency_key=idempotency_key,
        )
        with self._tracer.start_as_current_span("memory.store.insert"):
            (result,) = await self.store.insert_memories(namespace, [memory], now=now)
        return result

    async def recall(self, namespace: str, params: RecallParams) -> RecallOutcome:
        """Hybrid search: vector and keyword candidates, scored and fused."""
        started = time.perf_counter()
        terms = query_terms(params.query)
        pool = max(self.candidate_pool, params.k * 4)
        query = SearchQuery(
            vector=None, terms=terms, limit=pool, metadata_filter=dict(params.metadata_filter)
        )
        vector: Vector | None = None
        reason = ""
        if params.mode is Fusion.KEYWORD:
            with self._tracer.start_as_current_span("memory.store.search") as span:
                result = await self.store.search(namespace, query, now=self.clock())
                span.set_attribute("memory.candidates", len(result.candidates))
        else:
            # The store does its keyword work while the query is being embedded.
            embedding = asyncio.ensure_future(self._query_vector(params.query))
            # A task, not a bare coroutine: a store that fails before awaiting it leaves
            # nothing un-awaited behind.
            wanted = asyncio.ensure_future(_vector_of(embedding))
            try:
                with self._tracer.start_as_current_span("memory.store.search") as span:
                    result = await self.store.search_while(
                        namespace, query, wanted, now=self.clock()
                    )
                    span.set_attribute("memory.candidates", len(result.candidates))
            except BaseException:
                wanted.cancel()
                embedding.cancel()
                raise
            vector, reason = await embedding
        mode = params.mode if vector is not None else Fusion.KEYWORD
        by_id = {c.memory.id: c for c in result.candidates}
        scored = [
            Scored(c.memory.id, c.semantic, keyword_score(terms, c.terms, result.stats))
            for c in result.candidates
            if mode is not Fusion.SEMANTIC or c.semantic is not None
        ]
        fused = fuse(
            scored,
            mode=mode,
            semantic_weight=params.semantic_weight,
            keyword_weight=params.keyword_weight,
        )
        hits = [
            Hit(by_id[f.key].memory, f.score, f.semantic, f.keyword)
            for f in fused
            if f.score >= params.min_score
        ][: params.k]
        self._metrics.recall_seconds.record(time.perf_counter() - started, {"mode": mode.value})
        return RecallOutcome(hits, degraded=bool(reason), degraded_reason=reason)

    async def _query_vector(self, text: str) -> tuple[Vector | None, str]:
        """The query's vector, or None and why (the search then runs keyword-only)."""
        try:
            with self._tracer.start_as_current_span("memory.embed"):
                return (await self.embedder.embed([text]))[0], ""
        except EmbedderUnavailable as exc:
            self._metrics.degraded.add(1)
            return None, f"keyword-only: {exc}"

    async def forget(
        self,
        namespace: str,
        *,
        ids: Sequence[str] = (),
        metadata_filter: Mapping[str, str] | None = None,
        created_before: float | None = None,
    ) -> int:
        return await self.store.forget(
            namespace,
            ids=ids,
            metadata_filter=dict(metadata_filter or {}),
            created_before=created_before,
        )

    # -- background work ----------------------------------------------------------------

    async def backfill_once(self) -> int:
        """Embed up to one batch of memories stored without a vector; returns how many."""
        pending = await self.store.pending_embeddings(limit=self.backfill_batch)
        if not pending:
            return 0
        try:
            vectors = await self.embedder.embed([p.text for p in pending])
        except EmbedderUnavailable:
            return 0
        done = await self.store.set_embeddings(
            [(p.namespace, p.id, vectors[i]) for i, p in enumerate(pending)]
        )
        self._metrics.backfilled.add(done)
        log.info("back-filled %d memory vectors", done)
        return done

    async def run_maintenance(
        self, stop: asyncio.Event, *, backfill_every_s: float, purge_every_s: float
    ) -> None:
        """Back-fill vectors and purge expired rows until ``stop`` is set."""
        last_purge = 0.0
        while not stop.is_set():
            try:
                while await self.backfill_once() == self.backfill_batch:
                    pass
                if time.monotonic() - last_purge >= purge_every_s:
                    last_purge = time.monotonic()
                    await self.store.purge_expired(now=self.clock())
            except (LlmeshError, OSError) as exc:  # an outage: keep going, the store may be back
                log.warning("memory maintenance failed: %s", exc)
            # Anything else is a bug: the supervisor logs it with its stack and restarts.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backfill_every_s)
