"""SQLite backend of the gateway store (embedded default), off the event loop.

Every statement runs on a thread: writes on one writer thread with its own
connection, reads on one reader thread with its own (WAL: a read never waits for a
writer). ``llmesh keys`` writes the same file from another process; while it holds
the write lock, a write here waits up to ``busy_timeout_s`` on the writer thread,
never on the event loop, and authentication (a read) goes on. Failures map through
the kernel's one store error table (busy: ``UNAVAILABLE`` + retry hint).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from llmesh.kernel.errors import Unavailable
from llmesh.kernel.store_errors import sqlite_error
from llmesh.kernel.timestamps import check_expiry, stored_expiry
from llmesh_gateway.store import ApiKeyRecord, AuditRecord

T = TypeVar("T")
STORE = "key store"

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    fingerprint TEXT NOT NULL,
    salt BLOB NOT NULL,
    digest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    principal TEXT NOT NULL,
    tenant TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    request_id TEXT NOT NULL
);
"""

_KEY_COLUMNS = (
    "seq, key_id, name, role, tenant, created_at, expires_at, revoked_at, fingerprint, salt, digest"
)
_AUDIT_COLUMNS = "seq, time, principal, tenant, action, outcome, detail, request_id"


def _key(row: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        seq=row["seq"],
        key_id=row["key_id"],
        name=row["name"],
        role=row["role"],
        tenant=row["tenant"],
        created_at=row["created_at"],
        expires_at=stored_expiry(row["expires_at"], what=f"API key {row['key_id']}"),
        revoked_at=row["revoked_at"],
        fingerprint=row["fingerprint"],
        salt=bytes(row["salt"]),
        digest=bytes(row["digest"]),
    )


def _audit(row: sqlite3.Row) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        time=row["time"],
        principal=row["principal"],
        tenant=row["tenant"],
        action=row["action"],
        outcome=row["outcome"],
        detail=row["detail"],
        request_id=row["request_id"],
    )


class _Lane:
    """One thread with one connection: statements run there in order."""

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._connections: list[sqlite3.Connection] = []

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn: sqlite3.Connection | None = None
            try:  # connecting (lazily, on a lane's first call) fails like a statement
                conn = self._connection()
                return fn(conn)
            except BaseException as exc:
                if conn is not None and conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.rollback()
                mapped = sqlite_error(exc, store=STORE)
                if mapped is None:
                    raise
                raise mapped from None

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        def close_all() -> None:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

        self._executor.submit(close_all).result()
        self._executor.shutdown(wait=True)


class SqliteStore:
    """Gateway store in one SQLite file; statements run on a writer and a reader thread."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0) -> None:
        self._path = path
        self._busy_ms = int(busy_timeout_s * 1000)
        self._writer = _Lane("gateway-store-writer", self._connect)
        # ":memory:" is one database per connection: reads share the writer's.
        self._reader = (
            self._writer if path == ":memory:" else _Lane("gateway-store-reader", self._connect)
        )
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._path,
            check_same_thread=False,
            isolation_level=None,
            timeout=self._busy_ms / 1000,
        )
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    @classmethod
    async def open(cls, path: str, *, busy_timeout_s: float = 5.0) -> SqliteStore:
        """Open (and create) the database file and its tables."""
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        store = cls(path, busy_timeout_s=busy_timeout_s)
        try:
            await store._writer.run(lambda c: c.executescript(SCHEMA))
        except BaseException:
            await store.close()
            raise
        return store

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise Unavailable("key store is closed", retry_after_s=1.0)

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            result = fn(conn)
            conn.execute("COMMIT")
            return result

        return await self._writer.run(transaction)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise Unavailable("key store is closed", retry_after_s=1.0)
        return await self._reader.run(fn)

    async def create_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        check_expiry(record.expires_at)

        def insert(conn: sqlite3.Connection) -> ApiKeyRecord:
            conn.execute(
                "INSERT INTO api_keys (key_id, name, role, tenant, created_at, expires_at,"
                " revoked_at, fingerprint, salt, digest) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    record.key_id,
                    record.name,
                    record.role,
                    record.tenant,
                    record.created_at,
                    record.expires_at,
                    record.revoked_at,
                    record.fingerprint,
                    record.salt,
                    record.digest,
                ),
            )
            return _key(_select_key(conn, record.key_id))

        return await self._write(insert)

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        def read(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            return _key(row) if row is not None else None

        return await self._read(read)

    async def revoke_key(self, key_id: str, at: float) -> ApiKeyRecord | None:
        def update(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            found = conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                (at, key_id),
            ).rowcount
            return _key(_select_key(conn, key_id)) if found else None

        return await self._write(update)

    async def list_keys(
        self, *, after_seq: int, limit: int, include_revoked: bool
    ) -> list[ApiKeyRecord]:
        revoked = "" if include_revoked else " AND revoked_at IS NULL"
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE seq > ?{revoked} ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        )
        return [_key(row) for row in rows]

    async def add_audit(self, event: AuditRecord) -> None:
        await self.add_audits([event])

    async def add_audits(self, events: Sequence[AuditRecord]) -> None:
        rows = [
            (e.time, e.principal, e.tenant, e.action, e.outcome, e.detail, e.request_id)
            for e in events
        ]
        await self._write(
            lambda c: c.executemany(
                "INSERT INTO audit_events (time, principal, tenant, action, outcome, detail,"
                " request_id) VALUES (?,?,?,?,?,?,?)",
                rows,
            )
        )

    async def list_audit(self, *, before_seq: int | None, limit: int) -> list[AuditRecord]:
        bound = 2**62 if before_seq is None else before_seq
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (bound, limit),
            ).fetchall()
        )
        return [_audit(row) for row in rows]

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._writer.close)
        if self._reader is not self._writer:
            await asyncio.to_thread(self._reader.close)


def _select_key(conn: sqlite3.Connection, key_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
    ).fetchone()
    assert row is not None
    return row
