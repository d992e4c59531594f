"""SQLite backend of the gateway store (embedded default).

Queries are tiny indexed look-ups on a local file in WAL mode, so they run inline on
the event loop (a thread hop would cost more than the query).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from llmesh.kernel.errors import AlreadyExists
from llmesh_gateway.store import ApiKeyRecord, AuditRecord

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
        expires_at=row["expires_at"],
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


class SqliteStore:
    """Gateway store in one SQLite file."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    @classmethod
    def open(cls, path: str) -> SqliteStore:
        """Open (and create) the database file and its tables."""
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.executescript(SCHEMA)
        return cls(connection)

    async def create_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        try:
            cursor = self._db.execute(
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
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"API key {record.key_id} exists") from exc
        seq = cursor.lastrowid or 0
        found = await self.get_key(record.key_id)
        assert found is not None and found.seq == seq
        return found

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        return _key(row) if row is not None else None

    async def revoke_key(self, key_id: str, at: float) -> ApiKeyRecord | None:
        self._db.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
            (at, key_id),
        )
        return await self.get_key(key_id)

    async def list_keys(
        self, *, after_seq: int, limit: int, include_revoked: bool
    ) -> list[ApiKeyRecord]:
        revoked = "" if include_revoked else " AND revoked_at IS NULL"
        rows = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE seq > ?{revoked} ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [_key(row) for row in rows]

    async def add_audit(self, event: AuditRecord) -> None:
        self._db.execute(
            "INSERT INTO audit_events (time, principal, tenant, action, outcome, detail,"
            " request_id) VALUES (?,?,?,?,?,?,?)",
            (
                event.time,
                event.principal,
                event.tenant,
                event.action,
                event.outcome,
                event.detail,
                event.request_id,
            ),
        )

    async def list_audit(self, *, before_seq: int | None, limit: int) -> list[AuditRecord]:
        if before_seq is None:
            rows = self._db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (before_seq, limit),
            ).fetchall()
        return [_audit(row) for row in rows]

    async def ping(self) -> None:
        self._db.execute("SELECT 1").fetchone()

    async def close(self) -> None:
        self._db.close()
