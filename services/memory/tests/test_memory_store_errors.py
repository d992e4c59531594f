"""Each backend's error classification with real failures, and legacy rows that must not
break reads (SQLite file and PostgreSQL from the pgserver fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import psycopg.errors
import pytest

from llmesh.kernel.errors import (
    AlreadyExists,
    InvalidArgument,
    LlmeshError,
    Unavailable,
)
from llmesh.kernel.store_errors import postgres_error, sqlite_error
from llmesh.testing.inprocess import serving
from llmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from llmesh_memory.settings import MemorySettings
from llmesh_memory.store.base import MessageIn, NewMemory, SearchQuery
from llmesh_memory.store.postgres import PostgresStore
from llmesh_memory.store.sqlite import SqliteStore
from llmesh_memory.text import dedupe_key, index_terms, query_terms
from llmesh_memory.wiring import SERVICE_NAMES, wire

NS = "tenant"
NOW = 1_700_000_000.0
LEGACY_EXPIRY = NOW + 1e12  # what Remember with ttl 1e12 stored before the check


def memory(text: str, vector: np.ndarray | None = None) -> NewMemory:
    return NewMemory(
        text=text,
        dedupe_key=dedupe_key(NS, text),
        metadata={},
        terms=index_terms(text),
        vector=vector,
        expires_at=None,
    )


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return v / np.linalg.norm(v)


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
async def pg_store(postgres_dsn_factory: Callable[[], str]) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(postgres_dsn_factory())
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def test_postgres_nul_byte_in_text_is_invalid_argument(pg_store: PostgresStore) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await pg_store.insert_memories(NS, [memory("before\x00after")], now=NOW)
    assert "NUL" in caught.value.message
    assert caught.value.retry_after_s is None
    with pytest.raises(InvalidArgument):
        await pg_store.append_messages(
            NS,
            "s1",
            [MessageIn(role=2, content="a\x00b")],
            expected_version=0,
            idempotency_key="",
            ttl_s=None,
            now=NOW,
        )
    with pytest.raises(InvalidArgument):  # in a metadata filter too
        await pg_store.forget(NS, ids=[], metadata_filter={"k": "v\x00"}, created_before=None)
    await pg_store.ping()  # the pool is healthy afterwards


async def test_postgres_classification_of_real_server_errors(
    pg_store: PostgresStore, postgres_dsn_factory: Callable[[], str]
) -> None:
    dsn = pg_store.dsn
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.NumericValueOutOfRange) as out_of_range:
            await conn.execute("SELECT 9223372036854775807::bigint + 1")
        with pytest.raises(psycopg.errors.UniqueViolation) as unique:
            await conn.execute("CREATE TEMP TABLE t (k int PRIMARY KEY)")
            await conn.execute("INSERT INTO t VALUES (1), (1)")
        with pytest.raises(psycopg.errors.SerializationFailure) as serialization:
            await conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"
            )
        with pytest.raises(psycopg.errors.UndefinedTable) as bug:
            await conn.execute("SELECT * FROM no_such_table")
    assert isinstance(postgres_error(out_of_range.value), InvalidArgument)
    assert isinstance(postgres_error(unique.value), AlreadyExists)
    transient = postgres_error(serialization.value)
    assert isinstance(transient, Unavailable) and transient.retry_after_s is not None
    fault = postgres_error(bug.value)
    assert fault is not None and fault.code is grpc.StatusCode.INTERNAL
    assert fault.retry_after_s is None
    assert postgres_error(InvalidArgument("x")) is None  # domain errors pass through


async def test_postgres_legacy_out_of_range_expiry_reads_as_never(
    pg_store: PostgresStore,
) -> None:
    (stored,) = await pg_store.insert_memories(NS, [memory("legacy row", unit(1))], now=NOW)
    await pg_store.append_messages(
        NS,
        "s1",
        [MessageIn(role=2, content="hi")],
        expected_version=0,
        idempotency_key="",
        ttl_s=None,
        now=NOW,
    )
    async with await psycopg.AsyncConnection.connect(pg_store.dsn, autocommit=True) as conn:
        await conn.execute("UPDATE memories SET expires_at = %s", (LEGACY_EXPIRY,))
        await conn.execute("UPDATE sessions SET expires_at = %s", (LEGACY_EXPIRY,))
    found = await pg_store.search(NS, SearchQuery(unit(1), query_terms("legacy"), 5), now=NOW)
    assert [(c.memory.id, c.memory.expires_at) for c in found.candidates] == [(stored.id, None)]
    record, _ = await pg_store.get_session(NS, "s1", limit=5, now=NOW)
    assert record.expires_at is None
    (listed,) = await pg_store.list_sessions(NS, page_size=5, after=None, now=NOW)
    assert listed.expires_at is None


# -- SQLite -------------------------------------------------------------------------------


async def test_sqlite_locked_file_is_unavailable_and_too_big_is_invalid(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "m.db", busy_timeout_s=0.2)
    await store.start()
    other = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        with pytest.raises(Unavailable) as busy:
            await store.insert_memories(NS, [memory("blocked")], now=NOW)
        assert busy.value.retry_after_s is not None
        other.execute("ROLLBACK")
        # A Python int SQLite cannot bind: the caller's fault, not a retryable one.
        with pytest.raises(InvalidArgument):
            await store.list_sessions(NS, page_size=2**70, after=None, now=NOW)
        # The store still works.
        (done,) = await store.insert_memories(NS, [memory("unblocked")], now=NOW)
        assert not done.duplicate
    finally:
        other.close()
        await store.close()


def test_sqlite_classification_of_real_errors(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    too_many = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) + 1
    caught: dict[str, BaseException] = {}
    attempts: dict[str, Callable[[], Any]] = {
        "variables": lambda: conn.execute(
            f"SELECT 1 WHERE 1 IN ({','.join('?' * too_many)})", list(range(too_many))
        ),
        "overflow": lambda: conn.execute("SELECT ?", (2**64,)),
        "unique": lambda: conn.execute("INSERT INTO t VALUES (1, 'a'), (1, 'b')"),
        "not_null": lambda: conn.execute("INSERT INTO t VALUES (2, NULL)"),
        "bug": lambda: conn.execute("SELECT * FROM no_such_table"),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except (sqlite3.Error, OverflowError) as exc:
            caught[name] = exc
    conn.close()
    assert set(caught) == set(attempts)
    mapped = {name: sqlite_error(exc) for name, exc in caught.items()}
    assert isinstance(mapped["variables"], InvalidArgument)
    assert "fewer" in mapped["variables"].message
    assert isinstance(mapped["overflow"], InvalidArgument)
    assert isinstance(mapped["unique"], AlreadyExists)
    assert isinstance(mapped["not_null"], InvalidArgument)
    bug = mapped["bug"]
    assert isinstance(bug, LlmeshError) and bug.code is grpc.StatusCode.INTERNAL
    assert bug.retry_after_s is None
    assert sqlite_error(ValueError("not a store error")) is None


@contextlib.asynccontextmanager
async def memory_server(**overrides: Any) -> AsyncIterator[memory_pb2_grpc.MemoryServiceStub]:
    settings = MemorySettings(port=0, **overrides)
    async with serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served:
        channel = grpc.aio.insecure_channel(served.address)
        try:
            yield memory_pb2_grpc.MemoryServiceStub(channel)
        finally:
            await channel.close(None)


async def test_legacy_far_expiry_does_not_break_recall_over_grpc(
    tmp_path: Path, minilm_target: str
) -> None:
    db = tmp_path / "m.db"
    async with memory_server(sqlite_path=db, embedder_target=minilm_target) as stub:
        await stub.Remember(
            memory_pb2.MemoryServiceRememberRequest(
                namespace=NS, memory=common_pb2.MemoryDraft(text="the deploy key rotates")
            )
        )
        # A row as Remember(ttl=1e12 s) left it before expiries were bounded.
        await asyncio.to_thread(_set_expiry, db, LEGACY_EXPIRY)
        for mode in (
            common_pb2.FUSION_MODE_SEMANTIC,
            common_pb2.FUSION_MODE_WEIGHTED,
            common_pb2.FUSION_MODE_RRF,
        ):
            reply = await stub.Recall(
                memory_pb2.MemoryServiceRecallRequest(
                    namespace=NS,
                    query="when does the deploy key rotate",
                    options=common_pb2.RecallOptions(k=3, mode=mode),
                ),
                timeout=30,
            )
            assert [h.memory.text for h in reply.hits] == ["the deploy key rotates"]
            assert not reply.hits[0].memory.HasField("expires_at")


def _set_expiry(path: Path, expires_at: float) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        conn.execute("UPDATE memories SET expires_at = ?", (expires_at,))
    finally:
        conn.close()
