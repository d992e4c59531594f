"""PostgreSQL specifics: deadline -> statement_timeout, database down mid-write, migrations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from llmesh.kernel.context import (
    STATEMENT_MARGIN_S,
    RequestContext,
    reset_request,
    set_request,
)
from llmesh.kernel.errors import DeadlineExceeded, Unavailable
from llmesh.testing.polling import await_until
from llmesh.testing.servers import start_postgres
from llmesh_memory.store.base import MessageIn, NewMemory, SearchQuery
from llmesh_memory.store.postgres import PostgresStore
from llmesh_memory.text import dedupe_key, index_terms

NS = "tenant"


def memory(text: str, key: str = "") -> NewMemory:
    return NewMemory(
        text=text,
        dedupe_key=dedupe_key(NS, text),
        metadata={},
        terms=index_terms(text),
        vector=None,
        expires_at=None,
        idempotency_key=key,
    )


async def test_deadline_becomes_statement_timeout(postgres_dsn_factory: Callable[[], str]) -> None:
    dsn = postgres_dsn_factory()
    store = PostgresStore(dsn, statement_timeout_s=30)
    await store.start()
    await store.insert_memories(NS, [memory("slow queries are cut off")], now=time.time())
    # Another session holds a lock the search must wait for: a genuinely slow statement.
    blocker = await psycopg.AsyncConnection.connect(dsn)
    try:
        await blocker.execute("LOCK TABLE memories IN ACCESS EXCLUSIVE MODE")
        token = set_request(
            RequestContext(request_id="r1", method="/t", deadline=time.monotonic() + 0.5)
        )
        started = time.monotonic()
        try:
            with pytest.raises(DeadlineExceeded) as info:
                await store.search(NS, SearchQuery(None, ["slow"], 5), now=time.time())
        finally:
            reset_request(token)
        elapsed = time.monotonic() - started
        assert info.value.reason == "STATEMENT_TIMEOUT"
        assert 0.3 < elapsed < 2.0
        # The server really cancelled it: nothing of ours is still waiting on the lock.
        cur = await blocker.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )
        row = await cur.fetchone()
        assert row is not None and row[0] == 0
    finally:
        await blocker.rollback()
        await blocker.close()
        await store.close()
    # Without a caller deadline the configured default applies; queries work again.
    store = PostgresStore(dsn)
    await store.start()
    result = await store.search(NS, SearchQuery(None, ["slow"], 5), now=time.time())
    assert len(result.candidates) == 1
    await store.close()


async def test_migrations_are_versioned_and_idempotent(
    postgres_dsn_factory: Callable[[], str],
) -> None:
    dsn = postgres_dsn_factory()
    first, second = PostgresStore(dsn), PostgresStore(dsn)
    await asyncio.gather(first.start(), second.start())  # two replicas starting at once
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in await cur.fetchall()] == [1, 2, 3]
        cur = await conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding'"
        )
        row = await cur.fetchone()
        assert row is not None and "hnsw" in row[0]
    await first.close()
    await second.close()


@pytest.mark.slow
async def test_database_down_mid_write_loses_nothing_acknowledged() -> None:
    server = start_postgres()
    store = PostgresStore(server.dsn(), connect_timeout_s=1.0, max_size=4)
    acked: dict[int, str] = {}
    versions: list[int] = []
    failures: list[Unavailable] = []
    stop = asyncio.Event()

    async def writer() -> None:
        i = 0
        version = 0
        while not stop.is_set():
            # A careful client: retries the same request (same idempotency key) until acked.
            try:
                (result,) = await store.insert_memories(
                    NS, [memory(f"durable fact {i}", key=f"m{i}")], now=time.time()
                )
                outcome = await store.append_messages(
                    NS,
                    "s",
                    [MessageIn(2, f"turn {i}")],
                    expected_version=version,
                    idempotency_key=f"t{i}",
                    ttl_s=None,
                    now=time.time(),
                )
            except Unavailable as exc:
                failures.append(exc)
                await asyncio.sleep(0.05)
                continue
            acked[i] = result.id
            version = outcome.version
            versions.append(version)
            i += 1

    try:
        await store.start()
        task = asyncio.create_task(writer())
        await await_until(lambda: _ready(len(acked) >= 20), timeout_s=30, what="first acks")
        await asyncio.to_thread(server.handle.cleanup)  # the database goes away mid-stream
        await await_until(lambda: _ready(len(failures) >= 3), timeout_s=30, what="failures")
        import pgserver

        server.handle = await asyncio.to_thread(
            pgserver.get_server,  # type: ignore[attr-defined]
            server.directory,
            cleanup_mode="stop",
        )
        before = len(acked)
        await await_until(
            lambda: _ready(len(acked) >= before + 10), timeout_s=60, what="writes after restart"
        )
        stop.set()
        await task
        assert all(f.retry_after_s is not None for f in failures)
        async with await psycopg.AsyncConnection.connect(server.dsn()) as conn:
            cur = await conn.execute("SELECT id, text FROM memories WHERE namespace = %s", (NS,))
            stored: dict[str, str] = dict(await cur.fetchall())
            cur = await conn.execute(
                "SELECT version, message_count FROM sessions WHERE namespace = %s", (NS,)
            )
            session = await cur.fetchone()
        assert set(acked.values()) <= set(stored)  # every acknowledged write is there
        assert len(stored) == len(acked)  # and retries never stored anything twice
        assert session == (len(acked), len(acked))
        assert versions == list(range(1, len(acked) + 1))
    finally:
        stop.set()
        await store.close()
        server.stop()


async def _ready(value: bool) -> bool:
    return value


class SleepyStore(PostgresStore):
    """Test-only: runs arbitrary SQL in the store's own transaction (deadline plumbing)."""

    async def run_sql(self, sql: str) -> Any:
        async with self._transaction() as conn:
            cur = await conn.execute(sql)
            row = await cur.fetchone()
            return None if row is None else row[0]


def _deadline_in(seconds: float) -> object:
    return set_request(
        RequestContext(request_id="r", method="/t", deadline=time.monotonic() + seconds)
    )


async def test_statement_timeout_is_the_remaining_time(
    postgres_dsn_factory: Callable[[], str],
) -> None:
    store = SleepyStore(postgres_dsn_factory(), statement_timeout_s=30)
    await store.start()
    try:
        token = _deadline_in(2.0)
        try:
            shown = await store.run_sql("SHOW statement_timeout")
        finally:
            reset_request(token)
        # "1970ms" and the like: the remaining time less the kernel's margin, not the cap.
        assert shown.endswith("ms"), shown
        assert 1500 <= int(shown[:-2]) <= 2000 - int(STATEMENT_MARGIN_S * 1000)
        # Without a caller deadline: the configured cap.
        assert await store.run_sql("SHOW statement_timeout") == "30s"
        # Behaviour: a statement that outlives the caller is cut off at its deadline.
        token = _deadline_in(0.4)
        started = time.monotonic()
        try:
            with pytest.raises(DeadlineExceeded) as info:
                await store.run_sql("SELECT pg_sleep(5)")
        finally:
            reset_request(token)
        assert info.value.reason == "STATEMENT_TIMEOUT"
        assert 0.3 < time.monotonic() - started < 1.5
    finally:
        await store.close()


@pytest.mark.parametrize("left_s", [0.0, 0.001, 0.02])
async def test_tiny_remaining_deadline_is_deadline_exceeded(
    postgres_dsn_factory: Callable[[], str], left_s: float
) -> None:
    store = PostgresStore(postgres_dsn_factory())
    await store.start()
    try:
        for op in ("append", "search"):
            token = _deadline_in(left_s)
            try:
                with pytest.raises(DeadlineExceeded):
                    if op == "append":
                        await store.append_messages(
                            NS,
                            "s1",
                            [MessageIn(2, "hello")],
                            expected_version=-1,
                            idempotency_key="",
                            ttl_s=None,
                            now=time.time(),
                        )
                    else:
                        await store.search(NS, SearchQuery(None, ["hello"], 5), now=time.time())
            finally:
                reset_request(token)
        # Nothing was half-written: the session does not exist.
        result = await store.append_messages(
            NS,
            "s1",
            [MessageIn(2, "hello")],
            expected_version=0,
            idempotency_key="",
            ttl_s=None,
            now=time.time(),
        )
        assert result.version == 1
    finally:
        await store.close()
