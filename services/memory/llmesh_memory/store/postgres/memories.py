"""PostgreSQL memories: insert (deduplicated, idempotent), forget, back-fill, purge.

Async functions over a connection inside the store's transaction. Term statistics
change with every insert and delete, applied once per transaction in term order
(:class:`TermStats`), so concurrent writers lock rows in the same order.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from psycopg import AsyncConnection

from llmesh.kernel.timestamps import check_expiry

from ..base import (
    IDEMPOTENCY_TTL_S,
    NewMemory,
    PendingEmbedding,
    RememberResult,
    Vector,
    fingerprint,
    key_reused,
    new_memory_id,
)


class TermStats:
    """Changes to term statistics made by one transaction, applied once in term order."""

    def __init__(self) -> None:
        self.df: Counter[str] = Counter()
        self.docs = 0
        self.total = 0

    def add(self, terms: Sequence[str], sign: int) -> None:
        for term in set(terms):
            self.df[term] += sign
        self.docs += sign
        self.total += sign * len(terms)

    async def apply(self, conn: AsyncConnection[Any], namespace: str) -> None:
        changed = sorted(t for t, d in self.df.items() if d)
        if changed:
            await conn.execute(
                "INSERT INTO term_stats (namespace, term, df) "
                "SELECT %s, t, d FROM unnest(%s::text[], %s::bigint[]) AS u(t, d) "
                "ON CONFLICT (namespace, term) DO UPDATE SET df = term_stats.df + excluded.df",
                (namespace, changed, [self.df[t] for t in changed]),
            )
            if any(self.df[t] < 0 for t in changed):
                await conn.execute(
                    "DELETE FROM term_stats WHERE namespace = %s AND term = ANY(%s) AND df <= 0",
                    (namespace, changed),
                )
        if self.docs or self.total:
            await conn.execute(
                "INSERT INTO namespace_stats VALUES (%s, %s, %s) ON CONFLICT (namespace) "
                "DO UPDATE SET docs = namespace_stats.docs + excluded.docs, "
                "total_terms = namespace_stats.total_terms + excluded.total_terms",
                (namespace, self.docs, self.total),
            )


async def insert(
    conn: AsyncConnection[Any], namespace: str, memories: Sequence[NewMemory], *, now: float
) -> list[RememberResult]:
    """Store memories inside the caller's transaction."""
    for memory in memories:
        check_expiry(memory.expires_at)
    results: list[RememberResult | None] = [None] * len(memories)
    keys = [m.idempotency_key for m in memories if m.idempotency_key]
    seen: dict[str, tuple[str, Any]] = {}
    if keys:
        cur = await conn.execute(
            "SELECT key, fingerprint, result FROM idempotency WHERE namespace = %s "
            "AND kind = 'remember' AND key = ANY(%s)",
            (namespace, keys),
        )
        seen = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
    cur = await conn.execute(
        "SELECT dedupe_key, id, expires_at, embedding IS NOT NULL FROM memories "
        "WHERE namespace = %s AND dedupe_key = ANY(%s) FOR UPDATE",
        (namespace, [m.dedupe_key for m in memories]),
    )
    existing = {r[0]: r for r in await cur.fetchall()}
    stats = TermStats()
    expired = [r[1] for r in existing.values() if r[2] is not None and r[2] <= now]
    if expired:
        await delete_ids(conn, namespace, expired, stats)
        existing = {k: r for k, r in existing.items() if r[1] not in expired}
    fresh: dict[str, tuple[str, NewMemory]] = {}
    raced: dict[str, bool] = {}
    for i, memory in enumerate(memories):
        if memory.idempotency_key in seen:
            print_, stored = seen[memory.idempotency_key]
            if print_ != fingerprint("remember", memory.dedupe_key):
                raise key_reused()
            results[i] = RememberResult(**stored)
        elif memory.dedupe_key in existing:
            row = existing[memory.dedupe_key]
            results[i] = RememberResult(id=row[1], duplicate=True, embedded=bool(row[3]))
        elif memory.dedupe_key in fresh:
            twin_id, twin = fresh[memory.dedupe_key]
            results[i] = RememberResult(
                id=twin_id, duplicate=True, embedded=twin.vector is not None
            )
        else:
            fresh[memory.dedupe_key] = (new_memory_id(), memory)
    if fresh:
        await _insert_fresh(conn, namespace, fresh, raced, stats, now=now)
    for i, memory in enumerate(memories):
        if results[i] is None:
            mid, new = fresh[memory.dedupe_key]
            key = memory.dedupe_key
            results[i] = RememberResult(
                id=mid, duplicate=key in raced, embedded=raced.get(key, new.vector is not None)
            )
    await stats.apply(conn, namespace)
    rows = [
        (
            namespace,
            m.idempotency_key,
            fingerprint("remember", m.dedupe_key),
            json.dumps({"id": r.id, "duplicate": r.duplicate, "embedded": r.embedded}),
            now,
        )
        for m, r in zip(memories, results, strict=True)
        if m.idempotency_key and m.idempotency_key not in seen and r is not None
    ]
    if rows:
        async with conn.cursor() as c:
            await c.executemany(
                "INSERT INTO idempotency VALUES (%s, 'remember', %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                rows,
            )
        await _adopt_stored_outcomes(conn, namespace, memories, results)
    return [r for r in results if r is not None]


async def _adopt_stored_outcomes(
    conn: AsyncConnection[Any],
    namespace: str,
    memories: Sequence[NewMemory],
    results: list[RememberResult | None],
) -> None:
    """A concurrent call with the same key that committed first defines the outcome.

    Its row made our insert above do nothing (after waiting for its commit; each
    statement reads what is committed): for the same text we report its outcome (not
    ``duplicate`` for having lost the race), for other text the key was reused.
    """
    keys = [m.idempotency_key for m in memories if m.idempotency_key]
    cur = await conn.execute(
        "SELECT key, fingerprint, result FROM idempotency WHERE namespace = %s "
        "AND kind = 'remember' AND key = ANY(%s)",
        (namespace, keys),
    )
    stored = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
    for i, memory in enumerate(memories):
        if memory.idempotency_key not in stored:
            continue
        print_, outcome = stored[memory.idempotency_key]
        if print_ != fingerprint("remember", memory.dedupe_key):
            raise key_reused()  # rolls back what this call inserted
        results[i] = RememberResult(**outcome)


async def _insert_fresh(
    conn: AsyncConnection[Any],
    namespace: str,
    fresh: dict[str, tuple[str, NewMemory]],
    raced: dict[str, bool],
    stats: TermStats,
    *,
    now: float,
) -> None:
    """Insert new memories; one a concurrent writer stored first goes to ``raced``."""
    async with conn.cursor() as c:
        await c.executemany(
            "INSERT INTO memories (id, namespace, text, dedupe_key, metadata, terms, "
            "n_terms, embedding, created_at, expires_at) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (namespace, dedupe_key) DO NOTHING",
            [
                (
                    mid,
                    namespace,
                    m.text,
                    m.dedupe_key,
                    json.dumps(dict(m.metadata)),
                    list(m.terms),
                    len(m.terms),
                    m.vector,
                    now,
                    m.expires_at,
                )
                for mid, m in fresh.values()
            ],
        )
    cur = await conn.execute(
        "SELECT dedupe_key, id, embedding IS NOT NULL FROM memories "
        "WHERE namespace = %s AND dedupe_key = ANY(%s)",
        (namespace, list(fresh)),
    )
    final = {r[0]: (str(r[1]), bool(r[2])) for r in await cur.fetchall()}
    for key, (mid, new) in list(fresh.items()):
        if final[key][0] == mid:
            stats.add(new.terms, +1)
        else:  # a concurrent writer stored the same text first
            fresh[key] = (final[key][0], new)
            raced[key] = final[key][1]


async def delete_ids(
    conn: AsyncConnection[Any], namespace: str, ids: Sequence[str], stats: TermStats
) -> int:
    """Delete memories by id, recording their terms in ``stats``; returns how many."""
    cur = await conn.execute(
        "DELETE FROM memories WHERE namespace = %s AND id = ANY(%s) RETURNING terms",
        (namespace, list(ids)),
    )
    rows = await cur.fetchall()
    for (terms,) in rows:
        stats.add(terms, -1)
    return len(rows)


async def forget(
    conn: AsyncConnection[Any],
    namespace: str,
    *,
    ids: Sequence[str],
    metadata_filter: Mapping[str, str],
    created_before: float | None,
) -> int:
    """Delete the namespace's memories matching every given condition."""
    sql = "DELETE FROM memories WHERE namespace = %(ns)s"
    params: dict[str, Any] = {"ns": namespace}
    if ids:
        sql += " AND id = ANY(%(ids)s)"
        params["ids"] = list(ids)
    if metadata_filter:
        sql += " AND metadata @> %(filter)s::jsonb"
        params["filter"] = json.dumps(dict(metadata_filter))
    if created_before is not None:
        sql += " AND created_at < %(before)s"
        params["before"] = created_before
    cur = await conn.execute(sql + " RETURNING terms", params)
    rows = await cur.fetchall()
    stats = TermStats()
    for (terms,) in rows:
        stats.add(terms, -1)
    await stats.apply(conn, namespace)
    return len(rows)


async def pending(conn: AsyncConnection[Any], *, limit: int) -> list[PendingEmbedding]:
    """Memories without a vector, oldest first."""
    cur = await conn.execute(
        "SELECT namespace, id, text FROM memories WHERE embedding IS NULL "
        "ORDER BY created_at LIMIT %s",
        (limit,),
    )
    return [PendingEmbedding(*r) for r in await cur.fetchall()]


async def set_vectors(conn: AsyncConnection[Any], items: Sequence[tuple[str, str, Vector]]) -> int:
    """Store missing vectors; returns how many were stored."""
    done = 0
    for namespace, memory_id, vector in items:
        cur = await conn.execute(
            "UPDATE memories SET embedding = %s WHERE namespace = %s AND id = %s "
            "AND embedding IS NULL",
            (np.asarray(vector, np.float32), namespace, memory_id),
        )
        done += cur.rowcount
    return done


async def purge(conn: AsyncConnection[Any], *, now: float) -> int:
    """Delete expired sessions (and messages), memories and idempotency keys."""
    count = 0
    cur = await conn.execute(
        "DELETE FROM sessions WHERE expires_at IS NOT NULL AND expires_at <= %s "
        "RETURNING namespace, session_id",
        (now,),
    )
    gone = await cur.fetchall()
    count += len(gone)
    if gone:
        cur = await conn.execute(
            "DELETE FROM messages m USING unnest(%s::text[], %s::text[]) AS g(ns, sid) "
            "WHERE m.namespace = g.ns AND m.session_id = g.sid",
            ([g[0] for g in gone], [g[1] for g in gone]),
        )
    cur = await conn.execute(
        "DELETE FROM memories WHERE expires_at IS NOT NULL AND expires_at <= %s "
        "RETURNING namespace, terms",
        (now,),
    )
    by_namespace: dict[str, TermStats] = {}
    for namespace, terms in await cur.fetchall():
        by_namespace.setdefault(namespace, TermStats()).add(terms, -1)
        count += 1
    for namespace in sorted(by_namespace):
        await by_namespace[namespace].apply(conn, namespace)
    cur = await conn.execute(
        "DELETE FROM idempotency WHERE created_at <= %s", (now - IDEMPOTENCY_TTL_S,)
    )
    count += cur.rowcount
    return count
