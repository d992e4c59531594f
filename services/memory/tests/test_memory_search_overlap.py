"""``MemoryStore.search_while``: the keyword work runs while the query vector is still being
computed, and the result equals ``search`` with that vector, on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmesh.testing.polling import await_until
from llmesh_memory.scoring import CorpusStats
from llmesh_memory.store import base as store_base
from llmesh_memory.store.base import MemoryStore, NewMemory, SearchQuery, SearchResult, Vector
from llmesh_memory.store.postgres import search as pg_search
from llmesh_memory.store.redis_cache import RedisSessionCache
from llmesh_memory.store.sqlite import SqliteStore
from llmesh_memory.store.sqlite import search as sqlite_search
from llmesh_memory.text import dedupe_key, index_terms, query_terms

NOW = 1_700_000_000.0
NS = "tenant-a"
CODE = "E4417"


def vec(seed: int) -> Vector:
    v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    out: Vector = v / np.linalg.norm(v)
    return out


def _memory(text: str, seed: int) -> NewMemory:
    return NewMemory(
        text=text,
        dedupe_key=dedupe_key(NS, text),
        metadata={},
        terms=index_terms(text),
        vector=vec(seed),
        expires_at=None,
    )


async def _fill(store: MemoryStore) -> None:
    # "gateway" is in every memory (too common to pick beside a vector), the code in one.
    texts = [f"Incident {i} on the gateway: replica {i} lagged" for i in range(30)]
    texts[7] += f" with error {CODE}"
    await store.insert_memories(NS, [_memory(t, i) for i, t in enumerate(texts)], now=NOW)


def _summary(result: SearchResult) -> tuple[Any, ...]:
    rows = sorted(
        (c.memory.id, None if c.semantic is None else round(c.semantic, 5), tuple(c.terms))
        for c in result.candidates
    )
    return tuple(rows), result.stats


async def _later(value: Vector | None, gate: asyncio.Event | None = None) -> Vector | None:
    if gate is not None:
        await gate.wait()
    return value


QUERY = SearchQuery(None, query_terms(f"gateway outage {CODE}"), 10)


@pytest.mark.parametrize("seed", [7, 12])
async def test_result_equals_search_with_the_vector(store: MemoryStore, seed: int) -> None:
    await _fill(store)
    query = SearchQuery(vec(seed), QUERY.terms, QUERY.limit)
    expected = await store.search(NS, query, now=NOW)
    got = await store.search_while(NS, QUERY, _later(vec(seed)), now=NOW)
    assert _summary(got) == _summary(expected)
    texts = {c.memory.text for c in got.candidates}
    assert any(CODE in t for t in texts)  # the keyword candidate
    assert len(got.candidates) > 1  # and the vector ones
    assert all(c.semantic is not None for c in got.candidates)


async def test_no_vector_after_all_searches_keyword_only(store: MemoryStore) -> None:
    """The embedder failed: keyword-only picks the common term too, as ``search`` would."""
    await _fill(store)
    expected = await store.search(NS, QUERY, now=NOW)
    got = await store.search_while(NS, QUERY, _later(None), now=NOW)
    assert _summary(got) == _summary(expected)
    assert len(got.candidates) == 10  # "gateway" picked: every memory matches
    assert all(c.semantic is None for c in got.candidates)


def _spy(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each keyword query the backend under ``store`` runs."""
    calls: list[str] = []
    inner = store.inner if isinstance(store, RedisSessionCache) else store
    if isinstance(inner, SqliteStore):
        original: Callable[..., Any] = sqlite_search._keyword_rowids

        def rowids(*args: Any, **kwargs: Any) -> Any:
            calls.append("keyword")
            return original(*args, **kwargs)

        monkeypatch.setattr(sqlite_search, "_keyword_rowids", rowids)
    else:
        original_ids: Callable[..., Any] = pg_search._keyword_ids

        async def ids(*args: Any, **kwargs: Any) -> Any:
            calls.append("keyword")
            return await original_ids(*args, **kwargs)

        monkeypatch.setattr(pg_search, "_keyword_ids", ids)
    return calls


async def test_keyword_candidates_are_found_before_the_vector_arrives(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _fill(store)
    calls = _spy(store, monkeypatch)
    gate = asyncio.Event()
    task = asyncio.ensure_future(store.search_while(NS, QUERY, _later(vec(3), gate), now=NOW))

    async def searched() -> bool:
        return bool(calls)

    await await_until(searched, timeout_s=30, what="the keyword query")
    assert not task.done()  # waiting for the vector
    gate.set()
    result = await asyncio.wait_for(task, 30)
    assert any(c.semantic == pytest.approx(1.0, abs=1e-5) for c in result.candidates)


async def test_a_failed_embedding_fails_the_search_and_frees_the_store(
    store: MemoryStore,
) -> None:
    await _fill(store)

    async def broken() -> Vector | None:
        await asyncio.sleep(0)
        raise RuntimeError("embedder crashed")

    with pytest.raises(RuntimeError, match="embedder crashed"):
        await store.search_while(NS, QUERY, broken(), now=NOW)
    again = await store.search(NS, SearchQuery(vec(1), QUERY.terms, 10), now=NOW)
    assert again.candidates


async def test_a_cancelled_search_frees_its_sqlite_reader(tmp_path: Path) -> None:
    """One reader thread: a search left waiting for a vector must not keep it."""
    store = SqliteStore(tmp_path / "m.db", readers=1)
    await store.start()
    try:
        await _fill(store)
        calls: list[int] = []
        gate = asyncio.Event()  # never set
        original = sqlite_search._keyword_rowids

        def rowids(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return original(*args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sqlite_search, "_keyword_rowids", rowids)
            waiting = asyncio.ensure_future(
                store.search_while(NS, QUERY, _later(vec(3), gate), now=NOW)
            )

            async def started() -> bool:
                return bool(calls)

            await await_until(started, timeout_s=30, what="the reader to wait for the vector")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        result = await asyncio.wait_for(
            store.search(NS, SearchQuery(vec(2), QUERY.terms, 10), now=NOW), 30
        )
        assert result.candidates
    finally:
        await store.close()


def test_picking_follows_the_expected_vector() -> None:
    stats = CorpusStats(docs=30, total_terms=300, df={"gateway": 30, "e4417": 1})
    query = SearchQuery(None, ["gateway", "e4417"], 10)
    assert store_base.keyword_terms(query, stats) == ["e4417", "gateway"]
    assert store_base.keyword_terms(query, stats, with_vector=True) == ["e4417"]


class _FailingStore(SqliteStore):
    """Fails once the query is being embedded (a store outage mid-search)."""

    embedding: asyncio.Event

    async def search_while(self, *args: Any, **kwargs: Any) -> SearchResult:
        await asyncio.wait_for(self.embedding.wait(), 30)
        raise RuntimeError("store down")


class _SlowEmbedder:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def embed(self, texts: Any) -> Any:
        self.started.set()
        try:
            await asyncio.Event().wait()  # never answers
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def close(self) -> None:
        return None


async def test_a_failed_search_cancels_the_query_embedding(tmp_path: Path) -> None:
    from llmesh_memory.engine import MemoryEngine, RecallParams

    store = _FailingStore(tmp_path / "m.db")
    await store.start()
    embedder = _SlowEmbedder()
    store.embedding = embedder.started
    try:
        engine = MemoryEngine(store, embedder)
        with pytest.raises(RuntimeError, match="store down"):
            await engine.recall(NS, RecallParams(query="gateway outage"))
        await asyncio.sleep(0)  # let the cancellation reach the embedder
        assert embedder.cancelled
    finally:
        await store.close()
