"""The gateway key store at its edges, on real SQLite and PostgreSQL: an expiry a
Timestamp cannot carry is refused before anything is stored; a row stored before that
check existed does not break listing (API or CLI); driver failures map by one table."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from llmesh.kernel.context import deadline_scope
from llmesh.kernel.errors import AlreadyExists, DeadlineExceeded, InvalidArgument, Unavailable
from llmesh_gateway.admin import key_info
from llmesh_gateway.apikeys import ApiKeyManager
from llmesh_gateway.store import ApiKeyRecord, AuditRecord, GatewayStore
from llmesh_gateway.store_factory import open_store

NOW = 1_700_000_000.0
LEGACY_EXPIRY = NOW + 1e12  # what CreateApiKey(ttl=1e12 s) stored before the bounds


def record(key_id: str, *, expires_at: float | None) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key_id,
        name="n",
        role="user",
        tenant="acme",
        created_at=NOW,
        expires_at=expires_at,
        revoked_at=None,
        fingerprint="f" * 12,
        salt=b"s" * 16,
        digest=b"d" * 32,
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    """(store url, backend) of a fresh store of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}", "sqlite"
    else:
        factory: Callable[[], str] = request.getfixturevalue("postgres_dsn_factory")
        yield factory(), "postgres"


@pytest.fixture
async def store(store_url: tuple[str, str]) -> AsyncIterator[GatewayStore]:
    opened = await open_store(store_url[0])
    try:
        yield opened
    finally:
        await opened.close()


async def test_expiry_past_year_9999_is_refused_and_nothing_stored(store: GatewayStore) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.create_key(record("k1", expires_at=LEGACY_EXPIRY))
    assert caught.value.field_violations[0].field == "ttl"
    assert await store.get_key("k1") is None
    assert await store.list_keys(after_seq=0, limit=10, include_revoked=True) == []


async def test_manager_refuses_huge_ttl_before_the_store(store: GatewayStore) -> None:
    keys = ApiKeyManager(store, clock=lambda: NOW)
    with pytest.raises(InvalidArgument):
        await keys.create(name="n", role="user", tenant="acme", ttl_seconds=1e12)
    assert await store.list_keys(after_seq=0, limit=10, include_revoked=True) == []


async def test_duplicate_key_id_is_already_exists(store: GatewayStore) -> None:
    await store.create_key(record("k1", expires_at=None))
    with pytest.raises(AlreadyExists):
        await store.create_key(record("k1", expires_at=None))


async def test_nul_byte_is_invalid_argument_not_a_server_fault(
    store: GatewayStore, store_url: tuple[str, str]
) -> None:
    bad = AuditRecord(
        time=NOW,
        principal="p",
        tenant="t",
        action="a\x00b",
        outcome="OK",
        detail="",
        request_id="r",
    )
    if store_url[1] == "postgres":
        with pytest.raises(InvalidArgument):
            await store.add_audits([bad])
    else:  # SQLite keeps NUL bytes in text
        await store.add_audits([bad])
    await store.ping()


async def _store_legacy_row(url: str, backend: str, key_id: str) -> None:
    """Write a key row as the unchecked code did: an expiry 1e12 s away."""
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute(
                "INSERT INTO api_keys (key_id, name, role, tenant, created_at, expires_at,"
                " fingerprint, salt, digest) VALUES (?, 'old', 'admin', 'ops', ?, ?, 'f', x'00',"
                " x'00')",
                (key_id, NOW, LEGACY_EXPIRY),
            )
        finally:
            conn.close()
    else:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO llmesh_api_keys (key_id, name, role, tenant, created_at,"
                " expires_at, fingerprint, salt, digest) VALUES (%s, 'old', 'admin', 'ops',"
                " %s, %s, 'f', '\\x00', '\\x00')",
                (key_id, NOW, LEGACY_EXPIRY),
            )


async def test_legacy_far_expiry_row_does_not_break_listing(
    store: GatewayStore, store_url: tuple[str, str]
) -> None:
    keys = ApiKeyManager(store, clock=lambda: NOW)
    fine = await keys.create(name="fine", role="user", tenant="acme")
    await _store_legacy_row(*store_url, key_id="legacy0000000001")
    listed = await keys.list(after_seq=0, limit=10, include_revoked=True)
    assert [r.key_id for r in listed] == [fine.record.key_id, "legacy0000000001"]
    assert listed[1].expires_at is None  # read as "never expires" (and logged)
    infos = [key_info(r) for r in listed]  # what ListApiKeys sends: no "Timestamp is not valid"
    assert not infos[1].HasField("expires_at")


def test_cli_lists_a_legacy_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"

    def llmesh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmesh_cli.main", "keys", "--store-url", url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = llmesh("create", "--tenant", "acme", "--json")
    assert created.returncode == 0, created.stderr
    asyncio.run(_store_legacy_row(url, "sqlite", "legacy0000000001"))
    listed = llmesh("list", "--include-revoked", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["key_id"] for r in rows][-1] == "legacy0000000001"
    assert rows[-1]["expires_at"] == "-"
    huge = llmesh("create", "--tenant", "acme", "--ttl-seconds", str(10**12))
    assert huge.returncode == 2 and "ttl" in huge.stderr


async def test_sqlite_locked_by_another_process_is_unavailable_with_retry(tmp_path: Path) -> None:
    from llmesh_gateway.store_sqlite import SqliteStore

    path = tmp_path / "gateway.db"
    store = await SqliteStore.open(str(path), busy_timeout_s=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable) as busy:
            await store.create_key(record("k1", expires_at=None))
        assert busy.value.retry_after_s is not None
        assert await store.get_key("k1") is None  # reads go on meanwhile
        holder.execute("ROLLBACK")
        await store.create_key(record("k1", expires_at=None))
    finally:
        holder.close()
        await store.close()


async def test_postgres_statement_ends_at_the_callers_deadline(
    postgres_dsn_factory: Callable[[], str],
) -> None:
    """A key lookup waiting on a lock gives up at the caller's deadline (statement_timeout
    from the remaining time): DEADLINE_EXCEEDED, not a hang and not UNAVAILABLE."""
    dsn = postgres_dsn_factory()
    opened = await open_store(dsn)
    blocker = await psycopg.AsyncConnection.connect(dsn)
    try:
        await blocker.execute("LOCK TABLE llmesh_api_keys IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with deadline_scope(0.4, name="t"), pytest.raises(DeadlineExceeded) as info:
            await asyncio.wait_for(opened.get_key("k1"), 5.0)
        assert info.value.reason == "STATEMENT_TIMEOUT"
        assert 0.3 < time.monotonic() - started < 1.5
        with deadline_scope(0.0, name="t"), pytest.raises(DeadlineExceeded):
            await opened.get_key("k1")
    finally:
        await blocker.rollback()
        await blocker.close()
        await opened.close()


async def test_postgres_replicas_opening_a_fresh_database_at_once_all_start(
    postgres_dsn_factory: Callable[[], str],
) -> None:
    """Gateway replicas starting together on an empty database each create the schema
    (CREATE TABLE IF NOT EXISTS races in the catalog: UniqueViolation without a lock)."""
    dsn = postgres_dsn_factory()
    stores = await asyncio.gather(*(open_store(dsn) for _ in range(6)))
    try:
        await stores[0].create_key(record("k1", expires_at=None))
        assert (await stores[-1].get_key("k1")) is not None
    finally:
        await asyncio.gather(*(s.close() for s in stores))
