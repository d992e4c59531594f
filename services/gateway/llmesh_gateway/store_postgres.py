"""PostgreSQL backend of the gateway store (several gateway replicas share it).

psycopg's async driver and pool: nothing blocks the event loop. Every statement runs
with ``statement_timeout`` set from the caller's remaining time (the kernel's
``statement_timeout``: DEADLINE_EXCEEDED when it fires). Failures map through
the kernel's one store error table (connection lost, pool exhausted: ``UNAVAILABLE`` +
retry hint; a value PostgreSQL cannot hold: ``INVALID_ARGUMENT``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from llmesh.kernel.context import statement_timeout
from llmesh.kernel.store_errors import postgres_error
from llmesh.kernel.timestamps import check_expiry, stored_expiry
from llmesh_gateway.store import ApiKeyRecord, AuditRecord

# Statements run with the caller's remaining time (kernel statement_timeout), at most
# this long; background work (the audit writer) without a deadline gets this.
STATEMENT_TIMEOUT_S = 10.0
POOL_WAIT_S = 5.0
# pg_advisory_xact_lock key held while the schema is created (b"llmeshgw", as a bigint).
SCHEMA_LOCK = int.from_bytes(b"llmeshgw", "big") >> 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS llmesh_api_keys (
    seq BIGSERIAL PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    fingerprint TEXT NOT NULL,
    salt BYTEA NOT NULL,
    digest BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS llmesh_audit_events (
    seq BIGSERIAL PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
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


def _key(row: dict[str, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        **{k: v for k, v in row.items() if k not in ("salt", "digest", "expires_at")},
        expires_at=stored_expiry(row["expires_at"], what=f"API key {row['key_id']}"),
        salt=bytes(row["salt"]),
        digest=bytes(row["digest"]),
    )


class PostgresStore:
    """Gateway store in PostgreSQL (psycopg 3 async pool)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, max_size: int = 4) -> PostgresStore:
        """Connect and create the tables."""
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True, timeout=10)
        async with pool.connection() as conn, conn.transaction():
            # Replicas starting together: CREATE TABLE IF NOT EXISTS is not safe against
            # itself (UniqueViolation in the catalog), so one creates while the rest wait.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            await conn.execute(SCHEMA)
        return cls(pool)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        try:
            async with self._pool.connection(timeout=statement_timeout(POOL_WAIT_S)) as conn:
                # Session-level on this checkout (autocommit): every checkout sets it anew.
                limit_ms = max(1, round(statement_timeout(STATEMENT_TIMEOUT_S) * 1000))
                await conn.execute(f"SET statement_timeout = {limit_ms}")
                yield conn
        except Exception as exc:
            mapped = postgres_error(exc, store="key store")
            if mapped is None:
                raise
            raise mapped from None

    async def _one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            row: dict[str, Any] | None = await cur.fetchone()
            return row

    async def _all(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def create_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        check_expiry(record.expires_at)
        row = await self._one(
            "INSERT INTO llmesh_api_keys (key_id, name, role, tenant, created_at, expires_at,"
            " revoked_at, fingerprint, salt, digest) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            f" RETURNING {_KEY_COLUMNS}",
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
        assert row is not None
        return _key(row)

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._one(
            f"SELECT {_KEY_COLUMNS} FROM llmesh_api_keys WHERE key_id = %s", (key_id,)
        )
        return _key(row) if row else None

    async def revoke_key(self, key_id: str, at: float) -> ApiKeyRecord | None:
        row = await self._one(
            "UPDATE llmesh_api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE key_id = %s"
            f" RETURNING {_KEY_COLUMNS}",
            (at, key_id),
        )
        return _key(row) if row else None

    async def list_keys(
        self, *, after_seq: int, limit: int, include_revoked: bool
    ) -> list[ApiKeyRecord]:
        revoked = "" if include_revoked else " AND revoked_at IS NULL"
        rows = await self._all(
            f"SELECT {_KEY_COLUMNS} FROM llmesh_api_keys WHERE seq > %s{revoked}"
            " ORDER BY seq LIMIT %s",
            (after_seq, limit),
        )
        return [_key(row) for row in rows]

    async def add_audit(self, event: AuditRecord) -> None:
        await self.add_audits([event])

    async def add_audits(self, events: Sequence[AuditRecord]) -> None:
        rows = [
            (e.time, e.principal, e.tenant, e.action, e.outcome, e.detail, e.request_id)
            for e in events
        ]
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO llmesh_audit_events (time, principal, tenant, action, outcome,"
                " detail, request_id) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                rows,
            )

    async def list_audit(self, *, before_seq: int | None, limit: int) -> list[AuditRecord]:
        bound = 2**62 if before_seq is None else before_seq
        rows = await self._all(
            f"SELECT {_AUDIT_COLUMNS} FROM llmesh_audit_events WHERE seq < %s"
            " ORDER BY seq DESC LIMIT %s",
            (bound, limit),
        )
        return [AuditRecord(**row) for row in rows]

    async def ping(self) -> None:
        await self._one("SELECT 1 AS one", ())

    async def close(self) -> None:
        await self._pool.close()
