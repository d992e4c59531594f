"""A replayed ``Remember`` (same idempotency key) reports the original outcome faithfully.

On every backend: the first call's id, ``duplicate`` and ``embedded`` come back on a
replay, whatever happened to the text since (stored again under another key), and
when the replay races the original (concurrent calls with one key) every caller gets
the single stored outcome, not ``duplicate=true`` for having lost the race; a key
reused for other text in such a race is refused for all but one caller.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from llmesh.kernel.errors import InvalidArgument
from llmesh_memory.store.base import MemoryStore, NewMemory, RememberResult
from llmesh_memory.text import dedupe_key, index_terms

NOW = 1_700_000_000.0
NS = "tenant-replay"


def _memory(text: str, key: str = "", *, vector: bool = True) -> NewMemory:
    rng = np.random.default_rng(len(text))
    v = rng.standard_normal(384).astype(np.float32) if vector else None
    return NewMemory(
        text=text,
        dedupe_key=dedupe_key(NS, text),
        metadata={},
        terms=index_terms(text),
        vector=None if v is None else v / np.linalg.norm(v),
        expires_at=None,
        idempotency_key=key,
    )


async def _remember(store: MemoryStore, text: str, key: str, **kw: bool) -> RememberResult:
    (result,) = await store.insert_memories(NS, [_memory(text, key, **kw)], now=NOW)
    return result


async def test_replay_of_a_duplicate_says_duplicate(store: MemoryStore) -> None:
    original = await _remember(store, "The VPN profile is vpn-eu-3", "")
    first = await _remember(store, "the vpn profile is  VPN-EU-3", "k-dup")
    assert first.duplicate and first.id == original.id
    assert await _remember(store, "the vpn profile is  VPN-EU-3", "k-dup") == first


async def test_replay_of_a_first_store_stays_not_duplicate(store: MemoryStore) -> None:
    first = await _remember(store, "Standup moved to 9:30", "k-new")
    assert not first.duplicate and first.embedded
    # The same text stored again under another key is a duplicate ...
    other = await _remember(store, "standup moved to 9:30", "k-other")
    assert other.duplicate and other.id == first.id
    # ... but replaying the first key still reports what the first call did.
    assert await _remember(store, "Standup moved to 9:30", "k-new") == first
    assert await _remember(store, "standup moved to 9:30", "k-other") == other


async def test_replay_reports_the_original_embedded_flag(store: MemoryStore) -> None:
    first = await _remember(store, "Backups run at 02:00", "k-vec", vector=False)
    assert not first.embedded and not first.duplicate
    # A replay that comes with a vector does not rewrite history (nor store it twice).
    assert await _remember(store, "Backups run at 02:00", "k-vec", vector=True) == first


async def test_concurrent_replays_all_report_the_stored_outcome(store: MemoryStore) -> None:
    for round_ in range(3):
        text, key = f"Quarterly review #{round_} is on Friday", f"k-race-{round_}"
        results = await asyncio.gather(*(_remember(store, text, key) for _ in range(6)))
        assert len({r.id for r in results}) == 1, results
        # One call stored the text; every other one replays that call's outcome.
        assert all(not r.duplicate for r in results), results
        assert await _remember(store, text, key) == results[0]


async def test_concurrent_key_reuse_is_refused(store: MemoryStore) -> None:
    for round_ in range(3):
        key = f"k-reuse-{round_}"
        texts = [f"Reuse round {round_}: text {i}" for i in range(4)]
        outcomes = await asyncio.gather(
            *(_remember(store, t, key) for t in texts), return_exceptions=True
        )
        stored = [o for o in outcomes if isinstance(o, RememberResult)]
        refused = [o for o in outcomes if isinstance(o, InvalidArgument)]
        assert len(stored) == 1 and len(refused) == len(texts) - 1, outcomes
        winner = texts[outcomes.index(stored[0])]
        assert await _remember(store, winner, key) == stored[0]
        for text in texts:
            if text != winner:
                with pytest.raises(InvalidArgument):
                    await _remember(store, text, key)
