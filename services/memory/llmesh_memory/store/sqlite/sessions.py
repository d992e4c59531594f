"""SQLite sessions: append (versioned, idempotent), read, list, delete.

Plain functions over a connection; the store runs them on its writer or a reader thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from llmesh.kernel.errors import NotFound
from llmesh.kernel.timestamps import expiry

from ..base import (
    AppendResult,
    MessageIn,
    SessionRecord,
    StoredAppend,
    StoredMessage,
    append_fingerprint,
    append_record,
    key_reused,
    replay_of,
    session_record,
    stored_append,
    version_conflict,
)


def append(
    conn: sqlite3.Connection,
    namespace: str,
    session_id: str,
    messages: Sequence[MessageIn],
    *,
    expected_version: int,
    idempotency_key: str,
    ttl_s: float | None,
    now: float,
    request_fingerprint: str = "",
    annotations: Mapping[str, str] | None = None,
) -> AppendResult:
    """Append inside the caller's transaction (see ``MemoryStore.append_messages``)."""
    print_ = request_fingerprint or append_fingerprint(session_id, messages)
    expires = expiry(now, ttl_s)
    if idempotency_key:
        row = conn.execute(
            "SELECT fingerprint, result FROM idempotency "
            "WHERE namespace = ? AND kind = 'append' AND key = ?",
            (namespace, idempotency_key),
        ).fetchone()
        if row is not None:
            if row[0] != print_:
                raise key_reused()
            return replay_of(json.loads(row[1]))
    row = conn.execute(
        "SELECT version, message_count, expires_at FROM sessions "
        "WHERE namespace = ? AND session_id = ?",
        (namespace, session_id),
    ).fetchone()
    if row is not None and row[2] is not None and row[2] <= now:
        delete_rows(conn, namespace, session_id)
        row = None
    version, count = (0, 0) if row is None else (row[0], row[1])
    if version != expected_version:
        raise version_conflict(version, expected_version)
    conn.executemany(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
        [
            (namespace, session_id, count + i, m.role, m.content, now)
            for i, m in enumerate(messages)
        ],
    )
    if row is None:
        conn.execute(
            "INSERT INTO sessions VALUES (?, ?, 1, ?, ?, ?, ?)",
            (namespace, session_id, len(messages), now, now, expires),
        )
    else:
        conn.execute(
            "UPDATE sessions SET version = version + 1, message_count = ?, "
            "updated_at = ?, expires_at = ? WHERE namespace = ? AND session_id = ?",
            (count + len(messages), now, expires, namespace, session_id),
        )
    result = AppendResult(version=version + 1, annotations=dict(annotations or {}))
    if idempotency_key:
        stored = append_record(
            version=result.version,
            session_id=session_id,
            messages=messages,
            request_fingerprint=request_fingerprint,
            annotations=annotations,
        )
        conn.execute(
            "INSERT INTO idempotency VALUES (?, 'append', ?, ?, ?, ?)",
            (namespace, idempotency_key, print_, json.dumps(stored), now),
        )
    return result


def get_append(
    conn: sqlite3.Connection, namespace: str, idempotency_key: str
) -> StoredAppend | None:
    """What the append with ``idempotency_key`` stored (see ``MemoryStore.get_append``)."""
    row = conn.execute(
        "SELECT result FROM idempotency WHERE namespace = ? AND kind = 'append' AND key = ?",
        (namespace, idempotency_key),
    ).fetchone()
    return None if row is None else stored_append(json.loads(row[0]))


def get(
    conn: sqlite3.Connection, namespace: str, session_id: str, *, limit: int, now: float
) -> tuple[SessionRecord, list[StoredMessage]]:
    """The session and its last ``limit`` messages, read in one snapshot."""
    conn.execute("BEGIN")
    try:
        row = conn.execute(
            "SELECT session_id, version, message_count, created_at, updated_at, "
            "expires_at FROM sessions WHERE namespace = ? AND session_id = ?",
            (namespace, session_id),
        ).fetchone()
        if row is None or (row[5] is not None and row[5] <= now):
            raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
        rows = conn.execute(
            "SELECT role, content, created_at FROM messages "
            "WHERE namespace = ? AND session_id = ? ORDER BY seq DESC LIMIT ?",
            (namespace, session_id, limit),
        ).fetchall()
    finally:
        conn.rollback()
    return session_record(row), [StoredMessage(*r) for r in reversed(rows)]


def list_page(
    conn: sqlite3.Connection,
    namespace: str,
    *,
    page_size: int,
    after: tuple[float, str] | None,
    now: float,
) -> list[SessionRecord]:
    """Live sessions by ``updated_at`` descending, after the keyset ``after``."""
    sql = (
        "SELECT session_id, version, message_count, created_at, updated_at, expires_at "
        "FROM sessions WHERE namespace = ? AND (expires_at IS NULL OR expires_at > ?) "
    )
    params: list[Any] = [namespace, now]
    if after is not None:
        sql += "AND (updated_at < ? OR (updated_at = ? AND session_id < ?)) "
        params += [after[0], after[0], after[1]]
    sql += "ORDER BY updated_at DESC, session_id DESC LIMIT ?"
    params.append(page_size)
    return [session_record(r) for r in conn.execute(sql, params).fetchall()]


def delete(conn: sqlite3.Connection, namespace: str, session_id: str) -> int:
    """Delete a session inside the caller's transaction; ``NotFound``."""
    deleted = delete_rows(conn, namespace, session_id)
    if deleted is None:
        raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
    return deleted


def delete_rows(conn: sqlite3.Connection, namespace: str, session_id: str) -> int | None:
    """Delete a session and its messages; the messages deleted, None when no session."""
    found = conn.execute(
        "DELETE FROM sessions WHERE namespace = ? AND session_id = ?", (namespace, session_id)
    ).rowcount
    if not found:
        return None
    return int(
        conn.execute(
            "DELETE FROM messages WHERE namespace = ? AND session_id = ?", (namespace, session_id)
        ).rowcount
    )
