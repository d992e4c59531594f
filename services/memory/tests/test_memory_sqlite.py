"""SQLite specifics: migrations rebuild derived data; one writer thread serves many writers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from llmesh_memory.store.base import NewMemory, SearchQuery
from llmesh_memory.store.sqlite import SqliteStore
from llmesh_memory.text import dedupe_key, index_terms, query_terms

NOW = 1_700_000_000.0


async def test_migration_0002_rebuilds_the_keyword_index(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = SqliteStore(path)
    await store.start()
    text = "Error E4417 on db-replica-07"
    await store.insert_memories(
        "ns",
        [NewMemory(text, dedupe_key("ns", text), {}, index_terms(text), None, None)],
        now=NOW,
    )
    await store.close()
    # Make it a database written before 0002: unprefixed FTS terms, version 2 not applied.
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM memory_fts")
        conn.execute(
            "INSERT INTO memory_fts (rowid, terms, ns) SELECT rowid, terms, 'x' FROM memories"
        )
        conn.execute("DELETE FROM schema_migrations WHERE version = 2")
    store = SqliteStore(path)
    await store.start()
    try:
        found = await store.search("ns", SearchQuery(None, query_terms("E4417"), 5), now=NOW)
        assert [c.memory.text for c in found.candidates] == [text]
        other = await store.search("other", SearchQuery(None, query_terms("E4417"), 5), now=NOW)
        assert other.candidates == []
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == [1, 2]
