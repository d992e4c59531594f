"""PostgreSQL sessions: append (versioned, idempotent), read, list, delete.

Async functions over a connection inside the store's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

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

LIVE = "(expires_at IS NULL OR expires_at > %(now)s)"


async def append(
    conn: AsyncConnection[Any],
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
    expires_at = expiry(now, ttl_s)
    # Lock the session row (creating a version-0 row that a rollback removes), so
    # appends to one session serialize; then a replay is recognised even if it
    # raced with the original.
    await conn.execute(
        "INSERT INTO sessions VALUES (%s, %s, 0, 0, %s, %s, NULL) ON CONFLICT DO NOTHING",
        (namespace, session_id, now, now),
    )
    cur = await conn.execute(
        "SELECT version, message_count, expires_at FROM sessions "
        "WHERE namespace = %s AND session_id = %s FOR UPDATE",
        (namespace, session_id),
    )
    row = await cur.fetchone()
    assert row is not None
    version, count, expires = row
    if idempotency_key:
        cur = await conn.execute(
            "SELECT fingerprint, result FROM idempotency "
            "WHERE namespace = %s AND kind = 'append' AND key = %s",
            (namespace, idempotency_key),
        )
        seen = await cur.fetchone()
        if seen is not None:
            if seen[0] != print_:
                raise key_reused()
            return replay_of(seen[1])
    if expires is not None and expires <= now:
        await conn.execute(
            "DELETE FROM messages WHERE namespace = %s AND session_id = %s",
            (namespace, session_id),
        )
        await conn.execute(
            "UPDATE sessions SET version = 0, message_count = 0, created_at = %s "
            "WHERE namespace = %s AND session_id = %s",
            (now, namespace, session_id),
        )
        version, count = 0, 0
    if version != expected_version:
        raise version_conflict(int(version), expected_version)
    async with conn.cursor() as c:
        await c.executemany(
            "INSERT INTO messages VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (namespace, session_id, count + i, m.role, m.content, now)
                for i, m in enumerate(messages)
            ],
        )
    await conn.execute(
        "UPDATE sessions SET version = version + 1, message_count = %s, "
        "updated_at = %s, expires_at = %s WHERE namespace = %s AND session_id = %s",
        (count + len(messages), now, expires_at, namespace, session_id),
    )
    result = AppendResult(version=int(version) + 1, annotations=dict(annotations or {}))
    if idempotency_key:
        stored = append_record(
            version=result.version,
            session_id=session_id,
            messages=messages,
            request_fingerprint=request_fingerprint,
            annotations=annotations,
        )
        await conn.execute(
            "INSERT INTO idempotency VALUES (%s, 'append', %s, %s, %s, %s)",
            (namespace, idempotency_key, print_, json.dumps(stored), now),
        )
    return result


async def get_append(
    conn: AsyncConnection[Any], namespace: str, idempotency_key: str
) -> StoredAppend | None:
    """What the append with ``idempotency_key`` stored (see ``MemoryStore.get_append``)."""
    cur = await conn.execute(
        "SELECT result FROM idempotency WHERE namespace = %s AND kind = 'append' AND key = %s",
        (namespace, idempotency_key),
    )
    row = await cur.fetchone()
    return None if row is None else stored_append(row[0])


async def get(
    conn: AsyncConnection[Any], namespace: str, session_id: str, *, limit: int, now: float
) -> tuple[SessionRecord, list[StoredMessage]]:
    """The session and its last ``limit`` messages, oldest first; ``NotFound``."""
    cur = await conn.execute(
        "SELECT session_id, version, message_count, created_at, updated_at, expires_at "
        "FROM sessions WHERE namespace = %s AND session_id = %s AND version > 0",
        (namespace, session_id),
    )
    row = await cur.fetchone()
    if row is None or (row[5] is not None and row[5] <= now):
        raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
    # Messages below the session's count are immutable: a consistent view.
    cur = await conn.execute(
        "SELECT role, content, created_at FROM messages WHERE namespace = %s "
        "AND session_id = %s AND seq < %s ORDER BY seq DESC LIMIT %s",
        (namespace, session_id, row[2], limit),
    )
    rows = await cur.fetchall()
    return session_record(row), [StoredMessage(*r) for r in reversed(rows)]


async def list_page(
    conn: AsyncConnection[Any],
    namespace: str,
    *,
    page_size: int,
    after: tuple[float, str] | None,
    now: float,
) -> list[SessionRecord]:
    """Live sessions by ``updated_at`` descending, after the keyset ``after``."""
    sql = (
        "SELECT session_id, version, message_count, created_at, updated_at, expires_at "
        "FROM sessions WHERE namespace = %(ns)s AND version > 0 AND " + LIVE
    )
    params: dict[str, Any] = {"ns": namespace, "now": now, "n": page_size}
    if after is not None:
        sql += " AND (updated_at, session_id) < (%(at)s, %(sid)s)"
        params |= {"at": after[0], "sid": after[1]}
    sql += " ORDER BY updated_at DESC, session_id DESC LIMIT %(n)s"
    cur = await conn.execute(sql, params)
    return [session_record(r) for r in await cur.fetchall()]


async def delete(conn: AsyncConnection[Any], namespace: str, session_id: str) -> int:
    """Delete a session and its messages; the messages deleted; ``NotFound``."""
    cur = await conn.execute(
        "DELETE FROM sessions WHERE namespace = %s AND session_id = %s RETURNING 1",
        (namespace, session_id),
    )
    if await cur.fetchone() is None:
        raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
    cur = await conn.execute(
        "DELETE FROM messages WHERE namespace = %s AND session_id = %s",
        (namespace, session_id),
    )
    return int(cur.rowcount)
