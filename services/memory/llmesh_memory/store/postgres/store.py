"""PostgreSQL backend: psycopg 3 async pool, pgvector HNSW, tsvector GIN.

Every operation runs in one transaction whose ``statement_timeout`` is the caller's
remaining deadline (``DEADLINE_EXCEEDED`` when it fires). Connection failures map
to ``UNAVAILABLE`` with a retry hint; a write is acknowledged only after COMMIT
returned. Migrations (``postgres_migrations/NNNN_*.sql``) are applied at start
under an advisory lock, so several replicas may start at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
import psycopg
import psycopg.errors
from psycopg import AsyncConnection
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types import TypeInfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from llmesh.kernel.context import remaining_s
from llmesh.kernel.errors import DeadlineExceeded, NotFound, Unavailable

from ..scoring import CorpusStats
from .base import (
    IDEMPOTENCY_TTL_S,
    AppendResult,
    Candidate,
    MemoryRecord,
    MemoryStore,
    MessageIn,
    NewMemory,
    PendingEmbedding,
    RememberResult,
    SearchQuery,
    SearchResult,
    SessionRecord,
    StoredMessage,
    Vector,
    append_fingerprint,
    fingerprint,
    key_reused,
    keyword_terms,
    new_memory_id,
    version_conflict,
)

MIGRATION_LOCK = 0x6C6C6D657368  # "llmesh"
MIN_HNSW_SHARE = 0.2
# Keyword matches are ranked in SQL only when the picked terms match at most this many.
KEYWORD_RANK_MAX = 500
STATEMENT_MARGIN_S = 0.03
_LIVE = "(expires_at IS NULL OR expires_at > %(now)s)"


class _VectorDumper(Dumper):
    """NumPy float vectors in pgvector's binary format (dim, unused, big-endian float4s)."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        values = np.asarray(obj, dtype=">f4").ravel()
        return struct.pack(">HH", values.shape[0], 0) + values.tobytes()


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("llmesh_memory.store") / "postgres_migrations"
    out = [
        (int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(out)


def tsquery(namespace: str, terms: Sequence[str]) -> str:
    """A tsquery: the namespace's lexeme AND any of ``terms`` (each quoted literally)."""
    any_term = " | ".join("'" + t.replace("\\", "\\\\").replace("'", "''") + "'" for t in terms)
    marker = "ns:" + hashlib.md5(namespace.encode(), usedforsecurity=False).hexdigest()
    return f"'{marker}' & ({any_term})"


class _Stats:
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


class PostgresStore(MemoryStore):
    """The production store."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        ef_search: int = 400,
        exact_search_max_rows: int = 2_000,
        statement_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.ef_search = ef_search
        self.exact_search_max_rows = exact_search_max_rows
        self.statement_timeout_s = statement_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._vector_dumper: type[Dumper] | None = None
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s))},
        )
        self._opened = False

    async def _configure(self, conn: AsyncConnection[Any]) -> None:
        if self._vector_dumper is None:
            info = await TypeInfo.fetch(conn, "vector")
            if info is None:
                raise Unavailable("the pgvector extension is not installed", retry_after_s=5.0)
            self._vector_dumper = type("VectorDumper", (_VectorDumper,), {"oid": info.oid})
        conn.adapters.register_dumper(np.ndarray, self._vector_dumper)

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except psycopg.errors.QueryCanceled:
            raise DeadlineExceeded(
                "query cut off at the caller's deadline", reason="STATEMENT_TIMEOUT"
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError) as exc:
            raise Unavailable(
                f"postgres store unavailable: {type(exc).__name__}",
                reason="STORE_UNAVAILABLE",
                retry_after_s=1.0,
            ) from None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        left = remaining_s()
        budget = self.statement_timeout_s if left is None else left
        if budget <= 0:
            raise DeadlineExceeded("deadline passed before the query ran")
        async with self._errors():
            if not self._opened:
                await self.start()
            async with (
                self._pool.connection(timeout=min(budget, self.connect_timeout_s)) as conn,
                conn.transaction(),
            ):
                # A little under the caller's time, so the cut-off is reported by us
                # (DEADLINE_EXCEEDED with a reason) before the RPC itself times out.
                left_s = remaining_s()
                limit_s = budget if left_s is None else max(0.001, left_s - STATEMENT_MARGIN_S)
                await conn.execute(f"SET LOCAL statement_timeout = {max(1, int(limit_s * 1000))}")
                yield conn

    async def start(self) -> None:
        async with self._errors():
            async with (
                await AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s))
                ) as conn,
                conn.transaction(),
            ):
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL "
                    "DEFAULT now())"
                )
                cur = await conn.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in await cur.fetchall()}
                for version, sql in _migrations():
                    if version not in done:
                        await conn.execute(sql.encode())
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
                        )
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False

    async def ping(self) -> None:
        async with self._transaction() as conn:
            await conn.execute("SELECT 1")

    # -- sessions ---------------------------------------------------------------------

    async def append_messages(
        self,
        namespace: str,
        session_id: str,
        messages: Sequence[MessageIn],
        *,
        expected_version: int,
        idempotency_key: str,
        ttl_s: float | None,
        now: float,
    ) -> AppendResult:
        print_ = append_fingerprint(session_id, messages)
        async with self._transaction() as conn:
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
                    return AppendResult(version=int(seen[1]["version"]), replayed=True)
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
                (
                    count + len(messages),
                    now,
                    None if not ttl_s else now + ttl_s,
                    namespace,
                    session_id,
                ),
            )
            result = AppendResult(version=int(version) + 1)
            if idempotency_key:
                await conn.execute(
                    "INSERT INTO idempotency VALUES (%s, 'append', %s, %s, %s, %s)",
                    (
                        namespace,
                        idempotency_key,
                        print_,
                        json.dumps({"version": result.version}),
                        now,
                    ),
                )
        return result

    async def get_session(
        self, namespace: str, session_id: str, *, limit: int, now: float
    ) -> tuple[SessionRecord, list[StoredMessage]]:
        async with self._transaction() as conn:
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
        return SessionRecord(*row), [StoredMessage(*r) for r in reversed(rows)]

    async def list_sessions(
        self, namespace: str, *, page_size: int, after: tuple[float, str] | None, now: float
    ) -> list[SessionRecord]:
        sql = (
            "SELECT session_id, version, message_count, created_at, updated_at, expires_at "
            "FROM sessions WHERE namespace = %(ns)s AND version > 0 AND " + _LIVE
        )
        params: dict[str, Any] = {"ns": namespace, "now": now, "n": page_size}
        if after is not None:
            sql += " AND (updated_at, session_id) < (%(at)s, %(sid)s)"
            params |= {"at": after[0], "sid": after[1]}
        sql += " ORDER BY updated_at DESC, session_id DESC LIMIT %(n)s"
        async with self._transaction() as conn:
            cur = await conn.execute(sql, params)
            rows = await cur.fetchall()
        return [SessionRecord(*r) for r in rows]

    async def delete_session(self, namespace: str, session_id: str) -> int:
        async with self._transaction() as conn:
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

    # -- memories ------------------------------------------------------------------------

    async def insert_memories(
        self, namespace: str, memories: Sequence[NewMemory], *, now: float
    ) -> list[RememberResult]:
        results: list[RememberResult | None] = [None] * len(memories)
        async with self._transaction() as conn:
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
            stats = _Stats()
            expired = [r[1] for r in existing.values() if r[2] is not None and r[2] <= now]
            if expired:
                await self._delete_ids(conn, namespace, expired, stats)
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
            for i, memory in enumerate(memories):
                if results[i] is None:
                    mid, new = fresh[memory.dedupe_key]
                    key = memory.dedupe_key
                    results[i] = RememberResult(
                        id=mid,
                        duplicate=key in raced,
                        embedded=raced.get(key, new.vector is not None),
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
        return [r for r in results if r is not None]

    async def _delete_ids(
        self, conn: AsyncConnection[Any], namespace: str, ids: Sequence[str], stats: _Stats
    ) -> int:
        cur = await conn.execute(
            "DELETE FROM memories WHERE namespace = %s AND id = ANY(%s) RETURNING terms",
            (namespace, list(ids)),
        )
        rows = await cur.fetchall()
        for (terms,) in rows:
            stats.add(terms, -1)
        return len(rows)

    async def search(self, namespace: str, query: SearchQuery, *, now: float) -> SearchResult:
        params: dict[str, Any] = {
            "ns": namespace,
            "now": now,
            "n": query.limit,
            "q": query.vector,
            "filter": json.dumps(dict(query.metadata_filter)),
        }
        filt = " AND metadata @> %(filter)s::jsonb" if query.metadata_filter else ""
        async with self._transaction() as conn:
            stats, table_rows = await self._stats(conn, namespace, query.terms)
            parts: list[str] = []
            settings = ["SET LOCAL enable_seqscan = off"]  # GIN / HNSW, never a full scan
            if query.vector is not None and stats.docs:
                ef = self._hnsw_ef(stats.docs, table_rows, bool(query.metadata_filter))
                if ef is None:  # small namespace (or filtered): exact, over its rows only
                    parts.append(
                        "(WITH c AS MATERIALIZED (SELECT id, embedding <=> %(q)s AS d "
                        "FROM memories WHERE namespace = %(ns)s AND embedding IS NOT NULL AND "
                        + _LIVE
                        + filt
                        + ") SELECT id FROM c ORDER BY d LIMIT %(n)s)"
                    )
                else:
                    settings.append(f"SET LOCAL hnsw.ef_search = {ef}")
                    parts.append(
                        "(SELECT id FROM memories WHERE namespace = %(ns)s AND "
                        + _LIVE
                        + " ORDER BY embedding <=> %(q)s LIMIT %(n)s)"
                    )
            picking = keyword_terms(query, stats)
            if picking:
                params["tsq"] = tsquery(namespace, picking)
                # Ranking every match costs a heap read each; when the picked terms match
                # many memories (only one common term picked), any of them will do: all
                # candidates are scored with BM25 below anyway.
                matched = sum(stats.df[t] for t in picking)
                order = (
                    " ORDER BY ts_rank(tsv, %(tsq)s::tsquery) DESC"
                    if matched <= KEYWORD_RANK_MAX
                    else ""
                )
                # The namespace is matched through its lexeme (one GIN lookup); the outer
                # query checks the namespace column as well.
                parts.append(
                    "(SELECT id FROM memories WHERE tsv @@ %(tsq)s::tsquery AND "
                    + _LIVE
                    + filt
                    + order
                    + " LIMIT %(n)s)"
                )
            candidates: list[Candidate] = []
            if parts:
                await conn.execute("; ".join(settings))
                # One statement: both candidate lists, then their rows with exact cosine.
                cur = await conn.execute(
                    "SELECT id, text, metadata, created_at, expires_at, embedding IS NOT NULL, "
                    "terms, CASE WHEN embedding IS NULL OR %(q)s::vector IS NULL THEN NULL "
                    "ELSE 1 - (embedding <=> %(q)s) END FROM memories "
                    "WHERE namespace = %(ns)s AND id IN (" + " UNION ".join(parts) + ")",
                    params,
                )
                for row in await cur.fetchall():
                    record = MemoryRecord(
                        id=row[0],
                        text=row[1],
                        metadata=row[2],
                        created_at=row[3],
                        expires_at=row[4],
                        embedded=bool(row[5]),
                    )
                    semantic = None if row[7] is None else float(row[7])
                    candidates.append(Candidate(record, semantic, row[6]))
        return SearchResult(candidates, stats)

    def _hnsw_ef(self, docs: int, table_rows: float, filtered: bool) -> int | None:
        """``ef_search`` for an HNSW search of a namespace, or None to search it exactly.

        HNSW filters by namespace *after* the graph search, so it is used only when the
        namespace is large and holds a good share of all rows; ``ef_search`` grows as
        the share shrinks, so enough of the graph's candidates survive the filter.
        """
        if filtered or docs <= self.exact_search_max_rows:
            return None
        share = docs / max(table_rows, float(docs))
        if share < MIN_HNSW_SHARE:
            return None
        return min(1000, int(self.ef_search / share))

    @staticmethod
    async def _stats(
        conn: AsyncConnection[Any], namespace: str, terms: Sequence[str]
    ) -> tuple[CorpusStats, float]:
        """The namespace's term statistics and the table's estimated row count."""
        cur = await conn.execute(
            "SELECT (SELECT docs FROM namespace_stats WHERE namespace = %(ns)s), "
            "(SELECT total_terms FROM namespace_stats WHERE namespace = %(ns)s), "
            "(SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = 'memories'::regclass), "
            "(SELECT array_agg(term ORDER BY term) FROM term_stats "
            " WHERE namespace = %(ns)s AND term = ANY(%(terms)s)), "
            "(SELECT array_agg(df ORDER BY term) FROM term_stats "
            " WHERE namespace = %(ns)s AND term = ANY(%(terms)s))",
            {"ns": namespace, "terms": list(terms)},
        )
        row = await cur.fetchone()
        assert row is not None
        docs, total, rows, names, counts = row
        df = {str(t): int(c) for t, c in zip(names or (), counts or (), strict=True)}
        stats = CorpusStats(docs=int(docs or 0), total_terms=int(total or 0), df=df)
        return stats, float(rows or 0)

    async def forget(
        self,
        namespace: str,
        *,
        ids: Sequence[str],
        metadata_filter: Mapping[str, str],
        created_before: float | None,
    ) -> int:
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
        async with self._transaction() as conn:
            cur = await conn.execute(sql + " RETURNING terms", params)
            rows = await cur.fetchall()
            stats = _Stats()
            for (terms,) in rows:
                stats.add(terms, -1)
            await stats.apply(conn, namespace)
        return len(rows)

    async def pending_embeddings(self, *, limit: int) -> list[PendingEmbedding]:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "SELECT namespace, id, text FROM memories WHERE embedding IS NULL "
                "ORDER BY created_at LIMIT %s",
                (limit,),
            )
            rows = await cur.fetchall()
        return [PendingEmbedding(*r) for r in rows]

    async def set_embeddings(self, items: Sequence[tuple[str, str, Vector]]) -> int:
        done = 0
        async with self._transaction() as conn:
            for namespace, memory_id, vector in items:
                cur = await conn.execute(
                    "UPDATE memories SET embedding = %s WHERE namespace = %s AND id = %s "
                    "AND embedding IS NULL",
                    (np.asarray(vector, np.float32), namespace, memory_id),
                )
                done += cur.rowcount
        return done

    async def purge_expired(self, *, now: float) -> int:
        count = 0
        async with self._transaction() as conn:
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
            by_namespace: dict[str, _Stats] = {}
            for namespace, terms in await cur.fetchall():
                by_namespace.setdefault(namespace, _Stats()).add(terms, -1)
                count += 1
            for namespace in sorted(by_namespace):
                await by_namespace[namespace].apply(conn, namespace)
            cur = await conn.execute(
                "DELETE FROM idempotency WHERE created_at <= %s", (now - IDEMPOTENCY_TTL_S,)
            )
            count += cur.rowcount
        return count
