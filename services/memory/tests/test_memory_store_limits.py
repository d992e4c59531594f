"""Storage contract at the edges, on every backend: values a store cannot hold are the
caller's fault (``INVALID_ARGUMENT``, nothing written), never a retryable server fault;
rows written before those checks existed do not break reads."""

from __future__ import annotations

import math
import sqlite3

import pytest

from llmesh.kernel.errors import InvalidArgument, NotFound
from llmesh.kernel.timestamps import MAX_TIMESTAMP_S
from llmesh_memory.store.base import MemoryStore, MessageIn, NewMemory, SearchQuery
from llmesh_memory.text import dedupe_key, index_terms, query_terms

NOW = 1_700_000_000.0
NS = "tenant-limits"


def memory(text: str, *, expires_at: float | None = None) -> NewMemory:
    return NewMemory(
        text=text,
        dedupe_key=dedupe_key(NS, text),
        metadata={},
        terms=index_terms(text),
        vector=None,
        expires_at=expires_at,
    )


@pytest.mark.parametrize("expires_at", [NOW + 1e12, math.inf, math.nan])
async def test_expiry_past_year_9999_is_refused_and_nothing_stored(
    store: MemoryStore, expires_at: float
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.insert_memories(
            NS, [memory("fine memory"), memory("poisoned memory", expires_at=expires_at)], now=NOW
        )
    assert caught.value.field_violations[0].field == "ttl"
    found = await store.search(
        NS, SearchQuery(vector=None, terms=query_terms("memory"), limit=10), now=NOW
    )
    assert found.candidates == []  # the whole batch was refused, the good one too


@pytest.mark.parametrize("ttl", [1e12, math.inf, -1.0])
async def test_session_ttl_out_of_range_is_refused_and_nothing_stored(
    store: MemoryStore, ttl: float
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.append_messages(
            NS,
            "s1",
            [MessageIn(role=2, content="hello")],
            expected_version=0,
            idempotency_key="k1",
            ttl_s=ttl,
            now=NOW,
        )
    assert caught.value.field_violations[0].field == "ttl"
    with pytest.raises(NotFound):
        await store.get_session(NS, "s1", limit=10, now=NOW)


async def test_the_latest_valid_expiry_is_kept(store: MemoryStore) -> None:
    ttl = MAX_TIMESTAMP_S - NOW
    await store.append_messages(
        NS,
        "s1",
        [MessageIn(role=2, content="hello")],
        expected_version=0,
        idempotency_key="",
        ttl_s=ttl,
        now=NOW,
    )
    record, _ = await store.get_session(NS, "s1", limit=10, now=NOW)
    assert record.expires_at == pytest.approx(MAX_TIMESTAMP_S)


def most_sqlite_variables() -> int:
    """SQLite's limit on variables per statement in this build (32,766 by default)."""
    conn = sqlite3.connect(":memory:")
    try:
        return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        conn.close()


async def test_forget_more_ids_than_one_statement_holds(store: MemoryStore) -> None:
    results = await store.insert_memories(NS, [memory(f"note {i}") for i in range(5)], now=NOW)
    count = max(100_000, most_sqlite_variables() + 1)
    ids = [f"mem_missing_{i}" for i in range(count)]
    ids[count // 2] = results[1].id
    ids[-1] = results[3].id
    deleted = await store.forget(NS, ids=ids, metadata_filter={}, created_before=None)
    assert deleted == 2
    left = await store.search(
        NS, SearchQuery(vector=None, terms=query_terms("note"), limit=10), now=NOW
    )
    assert sorted(c.memory.id for c in left.candidates) == sorted(results[i].id for i in (0, 2, 4))
