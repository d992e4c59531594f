"""The storage contract, run against every backend (SQLite, PostgreSQL, each +Redis)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from llmesh.kernel.errors import Aborted, InvalidArgument, NotFound
from llmesh_memory.store.base import MemoryStore, MessageIn, NewMemory, SearchQuery
from llmesh_memory.text import dedupe_key, index_terms, query_terms

NOW = 1_700_000_000.0
NS = "tenant-a"
OTHER = "tenant-b"


def vec(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def memory(
    text: str,
    *,
    ns: str = NS,
    vector: np.ndarray | None = None,
    metadata: dict[str, str] | None = None,
    expires_at: float | None = None,
    key: str = "",
) -> NewMemory:
    return NewMemory(
        text=text,
        dedupe_key=dedupe_key(ns, text),
        metadata=metadata or {},
        terms=index_terms(text),
        vector=vector,
        expires_at=expires_at,
        idempotency_key=key,
    )


def msgs(*texts: str) -> list[MessageIn]:
    return [MessageIn(role=2, content=t) for t in texts]


async def append(
    store: MemoryStore,
    sid: str,
    version: int,
    *texts: str,
    key: str = "",
    ns: str = NS,
    now: float = NOW,
    ttl: float | None = None,
) -> int:
    result = await store.append_messages(
        ns,
        sid,
        msgs(*texts),
        expected_version=version,
        idempotency_key=key,
        ttl_s=ttl,
        now=now,
    )
    return result.version


# -- sessions -----------------------------------------------------------------------------


async def test_append_and_get_roundtrip(store: MemoryStore) -> None:
    assert await append(store, "s1", 0, "hello", "world") == 1
    assert await append(store, "s1", 1, "again", now=NOW + 1) == 2
    record, messages = await store.get_session(NS, "s1", limit=50, now=NOW + 2)
    assert (record.version, record.message_count) == (2, 3)
    assert [m.content for m in messages] == ["hello", "world", "again"]
    assert record.created_at == NOW and record.updated_at == NOW + 1
    _, last = await store.get_session(NS, "s1", limit=2, now=NOW + 2)
    assert [m.content for m in last] == ["world", "again"]


async def test_stale_version_is_aborted_with_current_version(store: MemoryStore) -> None:
    await append(store, "s1", 0, "one")
    with pytest.raises(Aborted) as info:
        await append(store, "s1", 0, "conflict")
    assert info.value.metadata["current_version"] == "1"
    assert info.value.retry_after_s is not None
    with pytest.raises(Aborted):
        await append(store, "new-session", 3, "too far ahead")
    _, messages = await store.get_session(NS, "s1", limit=10, now=NOW)
    assert [m.content for m in messages] == ["one"]


async def test_idempotent_replay_never_appends_twice(store: MemoryStore) -> None:
    first = await store.append_messages(
        NS,
        "s1",
        msgs("pay invoice"),
        expected_version=0,
        idempotency_key="k1",
        ttl_s=None,
        now=NOW,
    )
    replay = await store.append_messages(
        NS,
        "s1",
        msgs("pay invoice"),
        expected_version=0,
        idempotency_key="k1",
        ttl_s=None,
        now=NOW + 1,
    )
    assert (first.version, first.replayed) == (1, False)
    assert (replay.version, replay.replayed) == (1, True)
    record, messages = await store.get_session(NS, "s1", limit=10, now=NOW + 1)
    assert record.message_count == 1 and len(messages) == 1
    with pytest.raises(InvalidArgument):
        await store.append_messages(
            NS,
            "s1",
            msgs("something else"),
            expected_version=1,
            idempotency_key="k1",
            ttl_s=None,
            now=NOW + 2,
        )


async def test_concurrent_appends_exactly_one_wins(store: MemoryStore) -> None:
    await append(store, "race", 0, "start")
    results = await asyncio.gather(
        *(append(store, "race", 1, f"writer {i}") for i in range(8)), return_exceptions=True
    )
    wins = [r for r in results if r == 2]
    assert len(wins) == 1
    assert all(isinstance(r, Aborted) for r in results if r != 2)
    record, _ = await store.get_session(NS, "race", limit=10, now=NOW)
    assert (record.version, record.message_count) == (2, 2)


async def test_request_fingerprint_identifies_a_replay_and_annotations_come_back(
    store: MemoryStore,
) -> None:
    assert await store.get_append(NS, "turn-1") is None
    first = await store.append_messages(
        NS,
        "s1",
        msgs("hi", "first reply"),
        expected_version=0,
        idempotency_key="turn-1",
        ttl_s=None,
        now=NOW,
        request_fingerprint="fp-a",
        annotations={"finish_reason": "FINISH_REASON_LENGTH"},
    )
    # A retry of the same request regenerated another reply: still a replay.
    replay = await store.append_messages(
        NS,
        "s1",
        msgs("hi", "another reply"),
        expected_version=1,
        idempotency_key="turn-1",
        ttl_s=None,
        now=NOW + 1,
        request_fingerprint="fp-a",
        annotations={"finish_reason": "FINISH_REASON_EOS"},
    )
    assert (first.version, first.replayed) == (1, False)
    assert (replay.version, replay.replayed) == (1, True)
    assert dict(replay.annotations) == {"finish_reason": "FINISH_REASON_LENGTH"}
    stored = await store.get_append(NS, "turn-1")
    assert stored is not None
    assert (stored.session_id, stored.request_fingerprint, stored.version) == ("s1", "fp-a", 1)
    assert [m.content for m in stored.messages] == ["hi", "first reply"]
    assert dict(stored.annotations) == {"finish_reason": "FINISH_REASON_LENGTH"}
    assert await store.get_append("other-namespace", "turn-1") is None
    with pytest.raises(InvalidArgument):
        await store.append_messages(
            NS,
            "s1",
            msgs("hi", "first reply"),
            expected_version=1,
            idempotency_key="turn-1",
            ttl_s=None,
            now=NOW + 2,
            request_fingerprint="fp-b",
        )
    _, messages = await store.get_session(NS, "s1", limit=10, now=NOW + 2)
    assert len(messages) == 2


async def test_concurrent_replays_of_one_key_append_once(store: MemoryStore) -> None:
    results = await asyncio.gather(
        *(
            store.append_messages(
                NS,
                "dup",
                msgs("once"),
                expected_version=0,
                idempotency_key="same",
                ttl_s=None,
                now=NOW,
            )
            for _ in range(6)
        )
    )
    assert {r.version for r in results} == {1}
    assert sum(not r.replayed for r in results) == 1
    record, _ = await store.get_session(NS, "dup", limit=10, now=NOW)
    assert record.message_count == 1


async def test_list_sessions_pages_by_update_time(store: MemoryStore) -> None:
    for i in range(5):
        await append(store, f"s{i}", 0, "x", now=NOW + i)
    await append(store, "s0", 1, "newest", now=NOW + 10)
    await append(store, "hidden", 0, "x", ns=OTHER, now=NOW + 20)
    first = await store.list_sessions(NS, page_size=2, after=None, now=NOW + 30)
    assert [s.session_id for s in first] == ["s0", "s4"]
    rest = await store.list_sessions(
        NS, page_size=10, after=(first[-1].updated_at, first[-1].session_id), now=NOW + 30
    )
    assert [s.session_id for s in rest] == ["s3", "s2", "s1"]


async def test_delete_session(store: MemoryStore) -> None:
    await append(store, "s1", 0, "a", "b")
    assert await store.delete_session(NS, "s1") == 2
    with pytest.raises(NotFound):
        await store.get_session(NS, "s1", limit=10, now=NOW)
    with pytest.raises(NotFound):
        await store.delete_session(NS, "s1")
    assert await append(store, "s1", 0, "fresh start") == 1


async def test_session_ttl_expiry(store: MemoryStore) -> None:
    await append(store, "short", 0, "bye soon", ttl=10)
    record, _ = await store.get_session(NS, "short", limit=10, now=NOW + 5)
    assert record.expires_at == NOW + 10
    with pytest.raises(NotFound):
        await store.get_session(NS, "short", limit=10, now=NOW + 11)
    assert [
        s.session_id for s in await store.list_sessions(NS, page_size=10, after=None, now=NOW + 11)
    ] == []
    # An expired session starts over at version 0.
    assert await append(store, "short", 0, "reborn", now=NOW + 12) == 1
    assert await store.purge_expired(now=NOW + 12) == 0
    await append(store, "gone", 0, "x", ttl=1)
    assert await store.purge_expired(now=NOW + 100) >= 1
    with pytest.raises(NotFound):
        await store.delete_session(NS, "gone")


async def test_sessions_are_isolated_by_namespace(store: MemoryStore) -> None:
    await append(store, "shared-id", 0, "secret of a")
    with pytest.raises(NotFound):
        await store.get_session(OTHER, "shared-id", limit=10, now=NOW)
    assert await append(store, "shared-id", 0, "b's own", ns=OTHER) == 1
    _, messages = await store.get_session(NS, "shared-id", limit=10, now=NOW)
    assert [m.content for m in messages] == ["secret of a"]


# -- memories ---------------------------------------------------------------------------------


async def test_remember_dedupes_normalised_text(store: MemoryStore) -> None:
    (a,) = await store.insert_memories(
        NS, [memory("Deploys freeze on Fridays", vector=vec(1))], now=NOW
    )
    (b,) = await store.insert_memories(NS, [memory("  deploys   FREEZE on fridays ")], now=NOW)
    (c,) = await store.insert_memories(
        OTHER, [memory("Deploys freeze on Fridays", ns=OTHER)], now=NOW
    )
    assert not a.duplicate and a.embedded
    assert b.duplicate and b.id == a.id and b.embedded
    assert not c.duplicate and c.id != a.id
    batch = await store.insert_memories(
        NS, [memory("twin text"), memory("Twin  text"), memory("other")], now=NOW
    )
    assert batch[1].duplicate and batch[1].id == batch[0].id and not batch[2].duplicate


async def test_remember_idempotency_key(store: MemoryStore) -> None:
    (a,) = await store.insert_memories(NS, [memory("first", key="r1")], now=NOW)
    (b,) = await store.insert_memories(NS, [memory("first", key="r1")], now=NOW)
    assert b == a
    with pytest.raises(InvalidArgument):
        await store.insert_memories(NS, [memory("not the same", key="r1")], now=NOW)


async def test_search_finds_by_vector_and_keyword(store: MemoryStore) -> None:
    texts = [
        "Postgres failover on db-replica-07 took nine minutes",
        "Postgres failover on db-replica-08 was instant",
        "Alice likes green tea",
        "Error E4417 means the disk quota is exhausted",
    ]
    await store.insert_memories(
        NS, [memory(t, vector=vec(i)) for i, t in enumerate(texts)], now=NOW
    )
    # Vector: the query vector equals memory 2's, so it comes back with cosine 1.
    result = await store.search(NS, SearchQuery(vec(2), [], 2), now=NOW)
    by_text = {c.memory.text: c for c in result.candidates}
    assert by_text["Alice likes green tea"].semantic == pytest.approx(1.0, abs=1e-5)
    # Keyword: the exact code, not its twin.
    result = await store.search(
        NS, SearchQuery(None, query_terms("what happened to db-replica-07"), 10), now=NOW
    )
    texts_found = {c.memory.text for c in result.candidates}
    assert texts_found == {texts[0]}
    assert all(c.semantic is None for c in result.candidates)
    assert result.stats.docs == 4 and result.stats.df["db-replica-07"] == 1
    both = await store.search(NS, SearchQuery(None, ["postgres"], 10), now=NOW)
    assert both.stats.df == {"postgres": 2} and len(both.candidates) == 2


async def test_search_metadata_filter_and_isolation(store: MemoryStore) -> None:
    await store.insert_memories(
        NS,
        [
            memory("deploy checklist for payments", vector=vec(1), metadata={"team": "pay"}),
            memory("deploy checklist for search", vector=vec(2), metadata={"team": "search"}),
        ],
        now=NOW,
    )
    await store.insert_memories(
        OTHER, [memory("deploy checklist for payments", ns=OTHER, vector=vec(1))], now=NOW
    )
    result = await store.search(
        NS, SearchQuery(vec(1), ["deploy"], 10, {"team": "search"}), now=NOW
    )
    assert [c.memory.text for c in result.candidates] == ["deploy checklist for search"]
    result = await store.search(OTHER, SearchQuery(vec(2), ["search", "deploy"], 10), now=NOW)
    assert [c.memory.text for c in result.candidates] == ["deploy checklist for payments"]
    assert result.stats.docs == 1


async def test_memory_ttl_expiry_and_purge(store: MemoryStore) -> None:
    await store.insert_memories(
        NS, [memory("ephemeral note", vector=vec(5), expires_at=NOW + 10)], now=NOW
    )
    live = await store.search(NS, SearchQuery(vec(5), ["ephemeral"], 5), now=NOW + 5)
    assert len(live.candidates) == 1
    gone = await store.search(NS, SearchQuery(vec(5), ["ephemeral"], 5), now=NOW + 11)
    assert gone.candidates == []
    # The same text stored again after expiry is new, not a duplicate.
    (again,) = await store.insert_memories(NS, [memory("ephemeral note")], now=NOW + 12)
    assert not again.duplicate
    await store.insert_memories(NS, [memory("short lived", expires_at=NOW + 13)], now=NOW + 12)
    assert await store.purge_expired(now=NOW + 20) >= 1
    stats = (await store.search(NS, SearchQuery(None, ["short"], 5), now=NOW + 20)).stats
    assert stats.docs == 1 and "short" not in stats.df


async def test_forget_by_ids_filter_and_time(store: MemoryStore) -> None:
    results = await store.insert_memories(
        NS,
        [
            memory("m1", metadata={"src": "chat"}),
            memory("m2", metadata={"src": "chat"}),
            memory("m3", metadata={"src": "doc"}),
        ],
        now=NOW,
    )
    (late,) = await store.insert_memories(
        NS, [memory("m4", metadata={"src": "chat"})], now=NOW + 100
    )
    assert (
        await store.forget(OTHER, ids=[results[0].id], metadata_filter={}, created_before=None) == 0
    )
    assert await store.forget(NS, ids=[results[0].id], metadata_filter={}, created_before=None) == 1
    assert (
        await store.forget(NS, ids=[], metadata_filter={"src": "chat"}, created_before=NOW + 50)
        == 1
    )
    left = await store.search(NS, SearchQuery(None, ["m1", "m2", "m3", "m4"], 10), now=NOW + 200)
    assert {c.memory.text for c in left.candidates} == {"m3", "m4"}
    assert late.id in {c.memory.id for c in left.candidates}
    assert left.stats.docs == 2


async def test_backfill_pending_embeddings(store: MemoryStore) -> None:
    (a,) = await store.insert_memories(NS, [memory("no vector yet")], now=NOW)
    assert not a.embedded
    pending = await store.pending_embeddings(limit=10)
    assert [(p.namespace, p.id) for p in pending] == [(NS, a.id)]
    before = await store.search(NS, SearchQuery(vec(9), [], 5), now=NOW)
    assert before.candidates == []
    assert await store.set_embeddings([(NS, a.id, vec(9))]) == 1
    assert await store.set_embeddings([(NS, a.id, vec(9))]) == 0
    assert await store.pending_embeddings(limit=10) == []
    after = await store.search(NS, SearchQuery(vec(9), [], 5), now=NOW)
    assert [c.memory.id for c in after.candidates] == [a.id]
    assert after.candidates[0].memory.embedded


async def test_concurrent_writers_never_fail(store: MemoryStore) -> None:
    async def write(i: int) -> None:
        await store.insert_memories(NS, [memory(f"note number {i}", vector=vec(i))], now=NOW)
        await append(store, f"s{i}", 0, f"hello {i}")

    await asyncio.gather(*(write(i) for i in range(40)))
    result = await store.search(NS, SearchQuery(None, ["note"], 100), now=NOW)
    assert len(result.candidates) == 40 and result.stats.docs == 40
