"""SQLite memories: insert (deduplicated, idempotent), forget, back-fill, purge.

Plain functions over a connection, run inside the store's write transaction. Term
statistics (``term_stats``, ``namespace_stats``) change with every insert and delete.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmesh.kernel.timestamps import check_expiry

from ..base import (
    IDEMPOTENCY_TTL_S,
    NewMemory,
    PendingEmbedding,
    RememberResult,
    Vector,
    chunked,
    fingerprint,
    key_reused,
    new_memory_id,
)
from . import sessions
from .schema import fts_terms
from .search import metadata_filter_sql


def vector_blob(vector: Vector | None) -> bytes | None:
    """A vector as stored: float32 bytes."""
    return None if vector is None else np.asarray(vector, np.float32).tobytes()


@dataclass
class Inserted:
    """What an insert did: its results, vectors added by rowid, and whether rows went."""

    results: list[RememberResult] = field(default_factory=list)
    added: list[tuple[int, Vector]] = field(default_factory=list)
    replaced: bool = False


def insert(
    conn: sqlite3.Connection, namespace: str, memories: Sequence[NewMemory], *, now: float
) -> Inserted:
    """Store memories inside the caller's transaction."""
    out = Inserted()
    for memory in memories:
        check_expiry(memory.expires_at)
    for memory in memories:
        out.results.append(_insert_one(conn, namespace, memory, now=now, out=out))
    return out


def _insert_one(
    conn: sqlite3.Connection, namespace: str, memory: NewMemory, *, now: float, out: Inserted
) -> RememberResult:
    print_ = fingerprint("remember", memory.dedupe_key)
    if memory.idempotency_key:
        row = conn.execute(
            "SELECT fingerprint, result FROM idempotency "
            "WHERE namespace = ? AND kind = 'remember' AND key = ?",
            (namespace, memory.idempotency_key),
        ).fetchone()
        if row is not None:
            if row[0] != print_:
                raise key_reused()
            return RememberResult(**json.loads(row[1]))
    row = conn.execute(
        "SELECT rowid, id, expires_at, vector IS NOT NULL FROM memories "
        "WHERE namespace = ? AND dedupe_key = ?",
        (namespace, memory.dedupe_key),
    ).fetchone()
    if row is not None and (row[2] is None or row[2] > now):
        result = RememberResult(id=row[1], duplicate=True, embedded=bool(row[3]))
    else:
        if row is not None:  # an expired twin: replace it
            delete_rowids(conn, namespace, [row[0]])
            out.replaced = True
        memory_id = new_memory_id()
        terms = list(memory.terms)
        cur = conn.execute(
            "INSERT INTO memories (id, namespace, text, dedupe_key, metadata, terms, "
            "n_terms, vector, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                memory_id,
                namespace,
                memory.text,
                memory.dedupe_key,
                json.dumps(dict(memory.metadata), sort_keys=True),
                " ".join(terms),
                len(terms),
                vector_blob(memory.vector),
                now,
                memory.expires_at,
            ),
        )
        rowid = int(cur.lastrowid or 0)
        conn.execute(
            "INSERT INTO memory_fts (rowid, terms, ns) VALUES (?, ?, '')",
            (rowid, fts_terms(namespace, " ".join(terms))),
        )
        count_terms(conn, namespace, terms, +1)
        if memory.vector is not None:
            out.added.append((rowid, np.asarray(memory.vector, np.float32)))
        result = RememberResult(id=memory_id, duplicate=False, embedded=memory.vector is not None)
    if memory.idempotency_key:
        stored = {"id": result.id, "duplicate": result.duplicate, "embedded": result.embedded}
        conn.execute(
            "INSERT INTO idempotency VALUES (?, 'remember', ?, ?, ?, ?)",
            (namespace, memory.idempotency_key, print_, json.dumps(stored), now),
        )
    return result


def forget(
    conn: sqlite3.Connection,
    namespace: str,
    *,
    ids: Sequence[str],
    metadata_filter: Mapping[str, str],
    created_before: float | None,
) -> int:
    """Delete the namespace's memories matching every given condition.

    Ids are matched in slices of ``MAX_IDS_PER_STATEMENT``, so any number of ids works.
    """
    filter_sql, filter_params = metadata_filter_sql(metadata_filter)
    sql = "SELECT m.rowid FROM memories m WHERE m.namespace = ? " + filter_sql
    params: list[Any] = [namespace, *filter_params]
    if created_before is not None:
        sql += " AND m.created_at < ?"
        params.append(created_before)
    rowids: list[int] = []
    for part in chunked(ids) if ids else [()]:
        marks = f" AND m.id IN ({','.join('?' * len(part))})" if part else ""
        rowids += [r[0] for r in conn.execute(sql + marks, [*params, *part])]
    return delete_rowids(conn, namespace, rowids)


def pending(conn: sqlite3.Connection, *, limit: int) -> list[PendingEmbedding]:
    """Memories without a vector, oldest first."""
    rows = conn.execute(
        "SELECT namespace, id, text FROM memories WHERE vector IS NULL ORDER BY created_at LIMIT ?",
        (limit,),
    ).fetchall()
    return [PendingEmbedding(*r) for r in rows]


def set_vectors(
    conn: sqlite3.Connection, items: Sequence[tuple[str, str, Vector]]
) -> list[tuple[str, int, Vector]]:
    """Store missing vectors; ``(namespace, rowid, vector)`` of each one stored."""
    done = []
    for namespace, memory_id, vector in items:
        row = conn.execute(
            "UPDATE memories SET vector = ? WHERE namespace = ? AND id = ? "
            "AND vector IS NULL RETURNING rowid",
            (vector_blob(vector), namespace, memory_id),
        ).fetchone()
        if row is not None:
            done.append((namespace, int(row[0]), np.asarray(vector, np.float32)))
    return done


def purge(conn: sqlite3.Connection, *, now: float, touched: set[str]) -> int:
    """Delete expired sessions, memories (their namespaces go to ``touched``) and keys."""
    count = 0
    for namespace, session_id in conn.execute(
        "SELECT namespace, session_id FROM sessions WHERE expires_at IS NOT NULL "
        "AND expires_at <= ?",
        (now,),
    ).fetchall():
        sessions.delete_rows(conn, namespace, session_id)
        count += 1
    rows = conn.execute(
        "SELECT namespace, rowid FROM memories WHERE expires_at IS NOT NULL AND expires_at <= ?",
        (now,),
    ).fetchall()
    by_namespace: dict[str, list[int]] = {}
    for namespace, rowid in rows:
        by_namespace.setdefault(namespace, []).append(rowid)
    for namespace, rowids in by_namespace.items():
        count += delete_rowids(conn, namespace, rowids)
        touched.add(namespace)
    count += conn.execute(
        "DELETE FROM idempotency WHERE created_at <= ?", (now - IDEMPOTENCY_TTL_S,)
    ).rowcount
    return count


def count_terms(conn: sqlite3.Connection, namespace: str, terms: Sequence[str], sign: int) -> None:
    """Add (``sign`` +1) or remove (-1) one document's terms from the statistics."""
    distinct = sorted(set(terms))
    conn.executemany(
        "INSERT INTO term_stats VALUES (?, ?, ?) ON CONFLICT (namespace, term) "
        "DO UPDATE SET df = df + excluded.df",
        [(namespace, t, sign) for t in distinct],
    )
    if sign < 0:
        conn.execute("DELETE FROM term_stats WHERE namespace = ? AND df <= 0", (namespace,))
    conn.execute(
        "INSERT INTO namespace_stats VALUES (?, ?, ?) ON CONFLICT (namespace) DO UPDATE SET "
        "docs = docs + excluded.docs, total_terms = total_terms + excluded.total_terms",
        (namespace, sign, sign * len(terms)),
    )


def delete_rowids(conn: sqlite3.Connection, namespace: str, rowids: Sequence[int]) -> int:
    """Delete memories (and their FTS rows and term counts); returns how many."""
    count = 0
    for rowid in rowids:
        row = conn.execute(
            "DELETE FROM memories WHERE rowid = ? AND namespace = ? RETURNING terms",
            (rowid, namespace),
        ).fetchone()
        if row is None:
            continue
        conn.execute("DELETE FROM memory_fts WHERE rowid = ?", (rowid,))
        count_terms(conn, namespace, row[0].split(), -1)
        count += 1
    return count
