"""SQLite backend: one file, WAL, FTS5 for keywords, float32 vectors searched in NumPy.

Writes go through ONE connection on ONE thread (so concurrent writers queue instead
of failing with "database is locked"); reads use a small pool of threads with their
own connections (WAL lets them run beside the writer). ``synchronous=FULL``: a write
is acknowledged only after it reached the disk. The caller's remaining deadline is
enforced with a progress handler that interrupts a statement running past it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

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
from .vectors import VectorIndex, top_k

T = TypeVar("T")


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("llmesh_memory.store") / "sqlite_migrations"
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(out)


def namespace_token(namespace: str) -> str:
    """The token prefix that marks a namespace's terms in the FTS index."""
    return "n" + hashlib.sha256(namespace.encode()).hexdigest()[:16]


def fts_terms(namespace: str, terms: str) -> str:
    """Space-joined ``terms`` as indexed: each prefixed with the namespace token, so every
    posting list (and FTS5's BM25 statistics) belongs to one namespace."""
    prefix = namespace_token(namespace) + "_"
    return " ".join(prefix + t for t in terms.split())


def fts_query(namespace: str, terms: Iterable[str]) -> str:
    """An FTS5 query for the namespace's documents matching any of ``terms`` (quoted)."""
    prefix = namespace_token(namespace) + "_"
    return " OR ".join('"' + (prefix + t).replace('"', '""') + '"' for t in terms)


def _vector_blob(vector: Vector | None) -> bytes | None:
    return None if vector is None else np.asarray(vector, np.float32).tobytes()


class SqliteStore(MemoryStore):
    """The embedded default store."""

    name = "sqlite"

    def __init__(self, path: Path, *, readers: int = 4, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._indexes: dict[str, VectorIndex] = {}
        self._generation: dict[str, int] = {}
        self._closed = False

    # -- plumbing -----------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=self._busy_ms / 1000,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if self._closed:
            raise Unavailable("memory store is closed", retry_after_s=1.0)
        left = remaining_s()
        deadline = None if left is None else time.monotonic() + left

        def call() -> T:
            conn = self._connection()
            if deadline is not None:
                conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            try:
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded("deadline passed before the query ran")
                return fn(conn)
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.rollback()
                if "interrupted" in str(exc):
                    raise DeadlineExceeded("query cut off at the caller's deadline") from None
                raise Unavailable(
                    f"sqlite store error: {exc}", reason="STORE_UNAVAILABLE", retry_after_s=1.0
                ) from None
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            finally:
                conn.set_progress_handler(None, 0)

        executor = self._writer if write else self._readers
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    @staticmethod
    def _transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return result

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def migrate(conn: sqlite3.Connection) -> None:
            conn.create_function("llmesh_fts_terms", 2, fts_terms, deterministic=True)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in _migrations():
                if version in done:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in sql.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time())
                    )
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()

        await self._run(migrate, write=True)

    async def close(self) -> None:
        self._closed = True
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone(), write=False)

    # -- sessions -------------------------------------------------------------------

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

        def body(conn: sqlite3.Connection) -> AppendResult:
            if idempotency_key:
                row = conn.execute(
                    "SELECT fingerprint, result FROM idempotency "
                    "WHERE namespace = ? AND kind = 'append' AND key = ?",
                    (namespace, idempotency_key),
                ).fetchone()
                if row is not None:
                    if row[0] != print_:
                        raise key_reused()
                    return AppendResult(version=json.loads(row[1])["version"], replayed=True)
            row = conn.execute(
                "SELECT version, message_count, expires_at FROM sessions "
                "WHERE namespace = ? AND session_id = ?",
                (namespace, session_id),
            ).fetchone()
            if row is not None and row[2] is not None and row[2] <= now:
                _delete_session(conn, namespace, session_id)
                row = None
            version, count = (0, 0) if row is None else (row[0], row[1])
            if version != expected_version:
                raise version_conflict(version, expected_version)
            expires = None if not ttl_s else now + ttl_s
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
            result = AppendResult(version=version + 1)
            if idempotency_key:
                conn.execute(
                    "INSERT INTO idempotency VALUES (?, 'append', ?, ?, ?, ?)",
                    (
                        namespace,
                        idempotency_key,
                        print_,
                        json.dumps({"version": result.version}),
                        now,
                    ),
                )
            return result

        return await self._run(lambda c: self._transaction(c, body), write=True)

    async def get_session(
        self, namespace: str, session_id: str, *, limit: int, now: float
    ) -> tuple[SessionRecord, list[StoredMessage]]:
        def read(conn: sqlite3.Connection) -> tuple[SessionRecord, list[StoredMessage]]:
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
            return SessionRecord(*row), [StoredMessage(*r) for r in reversed(rows)]

        return await self._run(read, write=False)

    async def list_sessions(
        self, namespace: str, *, page_size: int, after: tuple[float, str] | None, now: float
    ) -> list[SessionRecord]:
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
        rows = await self._run(lambda c: c.execute(sql, params).fetchall(), write=False)
        return [SessionRecord(*r) for r in rows]

    async def delete_session(self, namespace: str, session_id: str) -> int:
        def body(conn: sqlite3.Connection) -> int:
            deleted = _delete_session(conn, namespace, session_id)
            if deleted is None:
                raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
            return deleted

        return await self._run(lambda c: self._transaction(c, body), write=True)

    # -- memories ---------------------------------------------------------------------

    async def insert_memories(
        self, namespace: str, memories: Sequence[NewMemory], *, now: float
    ) -> list[RememberResult]:
        added: list[tuple[int, Vector]] = []
        invalidate: list[bool] = []

        def one(conn: sqlite3.Connection, memory: NewMemory) -> RememberResult:
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
                    _delete_memories(conn, namespace, [row[0]])
                    invalidate.append(True)
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
                        _vector_blob(memory.vector),
                        now,
                        memory.expires_at,
                    ),
                )
                rowid = int(cur.lastrowid or 0)
                conn.execute(
                    "INSERT INTO memory_fts (rowid, terms, ns) VALUES (?, ?, '')",
                    (rowid, fts_terms(namespace, " ".join(terms))),
                )
                _count_terms(conn, namespace, terms, +1)
                if memory.vector is not None:
                    added.append((rowid, np.asarray(memory.vector, np.float32)))
                result = RememberResult(
                    id=memory_id, duplicate=False, embedded=memory.vector is not None
                )
            if memory.idempotency_key:
                conn.execute(
                    "INSERT INTO idempotency VALUES (?, 'remember', ?, ?, ?, ?)",
                    (
                        namespace,
                        memory.idempotency_key,
                        print_,
                        json.dumps(
                            {
                                "id": result.id,
                                "duplicate": result.duplicate,
                                "embedded": result.embedded,
                            }
                        ),
                        now,
                    ),
                )
            return result

        def body(conn: sqlite3.Connection) -> list[RememberResult]:
            return [one(conn, m) for m in memories]

        results = await self._run(lambda c: self._transaction(c, body), write=True)
        if invalidate:
            self._invalidate(namespace)
        else:
            self._index_add(namespace, added)
        return results

    def _invalidate(self, namespace: str) -> None:
        self._indexes.pop(namespace, None)
        self._generation[namespace] = self._generation.get(namespace, 0) + 1

    def _index_add(self, namespace: str, added: Sequence[tuple[int, Vector]]) -> None:
        index = self._indexes.get(namespace)
        if index is None:
            self._generation[namespace] = self._generation.get(namespace, 0) + 1
            return
        for rowid, vector in added:
            index.add(rowid, vector)

    async def search(self, namespace: str, query: SearchQuery, *, now: float) -> SearchResult:
        index = self._indexes.get(namespace)
        generation = self._generation.get(namespace, 0)
        snapshot = index.snapshot() if index is not None else None
        built: list[VectorIndex] = []

        def read(conn: sqlite3.Connection) -> SearchResult:
            conn.execute("BEGIN")
            try:
                return self._search_sync(
                    conn, namespace, query=query, now=now, snapshot=snapshot, built=built
                )
            finally:
                conn.rollback()

        result = await self._run(read, write=False)
        if built and self._generation.get(namespace, 0) == generation:
            self._indexes[namespace] = built[0]
        return result

    def _search_sync(
        self,
        conn: sqlite3.Connection,
        namespace: str,
        *,
        query: SearchQuery,
        now: float,
        snapshot: tuple[Any, Vector] | None,
        built: list[VectorIndex],
    ) -> SearchResult:
        stats = _stats(conn, namespace, query.terms)
        filter_sql, filter_params = _metadata_filter(query.metadata_filter)
        live = "(m.expires_at IS NULL OR m.expires_at > ?)"
        wanted: dict[int, float | None] = {}  # rowid -> cosine when already known
        if query.vector is not None and stats.docs:
            if snapshot is None:
                rows = conn.execute(
                    "SELECT rowid, vector FROM memories WHERE namespace = ? "
                    "AND vector IS NOT NULL ORDER BY rowid",
                    (namespace,),
                ).fetchall()
                dim = len(query.vector)
                good = [(r[0], r[1]) for r in rows if len(r[1]) == dim * 4]
                rowids = np.fromiter((r[0] for r in good), np.int64, len(good))
                matrix = np.frombuffer(b"".join(r[1] for r in good), np.float32).reshape(-1, dim)
                index = VectorIndex.from_arrays(rowids, matrix)
                built.append(index)
                snapshot = index.snapshot()
            rowids, matrix = snapshot
            if query.metadata_filter:
                allowed = np.array(
                    [
                        r[0]
                        for r in conn.execute(
                            f"SELECT m.rowid FROM memories m WHERE m.namespace = ? AND {live} "
                            f"{filter_sql}",
                            (namespace, now, *filter_params),
                        )
                    ],
                    np.int64,
                )
                mask = np.isin(rowids, allowed)
                rowids, matrix = rowids[mask], matrix[mask]
            for rowid, similarity in top_k(rowids, matrix, query.vector, query.limit):
                wanted[rowid] = similarity
        picking = keyword_terms(query, stats)
        if picking and not query.metadata_filter:
            # FTS5 ranks inside its own index (fast); expiry is checked on the fetch below.
            for (rowid,) in conn.execute(
                "SELECT rowid FROM memory_fts WHERE memory_fts MATCH ? ORDER BY rank LIMIT ?",
                (fts_query(namespace, picking), query.limit),
            ):
                wanted.setdefault(rowid, None)
        elif picking:
            for (rowid,) in conn.execute(
                "SELECT m.rowid FROM memory_fts f JOIN memories m ON m.rowid = f.rowid "
                f"WHERE memory_fts MATCH ? AND +m.namespace = ? AND {live} {filter_sql} "
                "ORDER BY f.rank LIMIT ?",
                (fts_query(namespace, picking), namespace, now, *filter_params, query.limit),
            ):
                wanted.setdefault(rowid, None)
        candidates: list[Candidate] = []
        if wanted:
            marks = ",".join("?" * len(wanted))
            # Vectors are read only for candidates whose cosine is not known yet.
            rows = conn.execute(
                "SELECT m.rowid, m.id, m.text, m.metadata, m.created_at, m.expires_at, "
                "m.vector IS NOT NULL, m.terms FROM memories m "
                # "+m.namespace": look rows up by rowid, never scan the namespace index.
                f"WHERE m.rowid IN ({marks}) AND +m.namespace = ? AND {live} {filter_sql}",
                (*wanted, namespace, now, *filter_params),
            ).fetchall()
            unknown = [r[0] for r in rows if r[6] and wanted[r[0]] is None]
            if unknown and query.vector is not None:
                for rowid, blob in conn.execute(
                    f"SELECT rowid, vector FROM memories WHERE rowid IN "
                    f"({','.join('?' * len(unknown))})",
                    unknown,
                ):
                    vector = np.frombuffer(blob, np.float32)
                    if vector.shape == query.vector.shape:
                        wanted[rowid] = float(vector @ query.vector)
            for row in rows:
                record = MemoryRecord(
                    id=row[1],
                    text=row[2],
                    metadata=json.loads(row[3]),
                    created_at=row[4],
                    expires_at=row[5],
                    embedded=bool(row[6]),
                )
                semantic = wanted[row[0]] if query.vector is not None else None
                candidates.append(Candidate(record, semantic, row[7].split()))
        return SearchResult(candidates, stats)

    async def forget(
        self,
        namespace: str,
        *,
        ids: Sequence[str],
        metadata_filter: Mapping[str, str],
        created_before: float | None,
    ) -> int:
        sql = "SELECT m.rowid FROM memories m WHERE m.namespace = ? "
        params: list[Any] = [namespace]
        if ids:
            sql += f"AND m.id IN ({','.join('?' * len(ids))}) "
            params += list(ids)
        filter_sql, filter_params = _metadata_filter(metadata_filter)
        sql += filter_sql
        params += filter_params
        if created_before is not None:
            sql += " AND m.created_at < ?"
            params.append(created_before)

        def body(conn: sqlite3.Connection) -> int:
            rowids = [r[0] for r in conn.execute(sql, params)]
            return _delete_memories(conn, namespace, rowids)

        deleted = await self._run(lambda c: self._transaction(c, body), write=True)
        if deleted:
            self._invalidate(namespace)
        return deleted

    async def pending_embeddings(self, *, limit: int) -> list[PendingEmbedding]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT namespace, id, text FROM memories WHERE vector IS NULL "
                "ORDER BY created_at LIMIT ?",
                (limit,),
            ).fetchall(),
            write=False,
        )
        return [PendingEmbedding(*r) for r in rows]

    async def set_embeddings(self, items: Sequence[tuple[str, str, Vector]]) -> int:
        def body(conn: sqlite3.Connection) -> list[tuple[str, int, Vector]]:
            done = []
            for namespace, memory_id, vector in items:
                row = conn.execute(
                    "UPDATE memories SET vector = ? WHERE namespace = ? AND id = ? "
                    "AND vector IS NULL RETURNING rowid",
                    (_vector_blob(vector), namespace, memory_id),
                ).fetchone()
                if row is not None:
                    done.append((namespace, int(row[0]), np.asarray(vector, np.float32)))
            return done

        done = await self._run(lambda c: self._transaction(c, body), write=True)
        for namespace, rowid, vector in done:
            self._index_add(namespace, [(rowid, vector)])
        return len(done)

    async def purge_expired(self, *, now: float) -> int:
        touched: set[str] = set()

        def body(conn: sqlite3.Connection) -> int:
            count = 0
            for namespace, session_id in conn.execute(
                "SELECT namespace, session_id FROM sessions "
                "WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            ).fetchall():
                _delete_session(conn, namespace, session_id)
                count += 1
            rows = conn.execute(
                "SELECT namespace, rowid FROM memories "
                "WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            ).fetchall()
            by_namespace: dict[str, list[int]] = {}
            for namespace, rowid in rows:
                by_namespace.setdefault(namespace, []).append(rowid)
            for namespace, rowids in by_namespace.items():
                count += _delete_memories(conn, namespace, rowids)
                touched.add(namespace)
            count += conn.execute(
                "DELETE FROM idempotency WHERE created_at <= ?", (now - IDEMPOTENCY_TTL_S,)
            ).rowcount
            return count

        count = await self._run(lambda c: self._transaction(c, body), write=True)
        for namespace in touched:
            self._invalidate(namespace)
        return count


# -- SQL helpers (run on the writer or a reader thread) ------------------------------


def _delete_session(conn: sqlite3.Connection, namespace: str, session_id: str) -> int | None:
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


def _count_terms(conn: sqlite3.Connection, namespace: str, terms: Sequence[str], sign: int) -> None:
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


def _delete_memories(conn: sqlite3.Connection, namespace: str, rowids: Sequence[int]) -> int:
    count = 0
    for rowid in rowids:
        row = conn.execute(
            "DELETE FROM memories WHERE rowid = ? AND namespace = ? RETURNING terms",
            (rowid, namespace),
        ).fetchone()
        if row is None:
            continue
        conn.execute("DELETE FROM memory_fts WHERE rowid = ?", (rowid,))
        _count_terms(conn, namespace, row[0].split(), -1)
        count += 1
    return count


def _stats(conn: sqlite3.Connection, namespace: str, terms: Sequence[str]) -> CorpusStats:
    row = conn.execute(
        "SELECT docs, total_terms FROM namespace_stats WHERE namespace = ?", (namespace,)
    ).fetchone()
    docs, total = (0, 0) if row is None else (row[0], row[1])
    df: dict[str, int] = {}
    if terms:
        marks = ",".join("?" * len(terms))
        df = dict(
            conn.execute(
                f"SELECT term, df FROM term_stats WHERE namespace = ? AND term IN ({marks})",
                (namespace, *terms),
            ).fetchall()
        )
    return CorpusStats(docs=docs, total_terms=total, df=df)


def _metadata_filter(metadata_filter: Mapping[str, str]) -> tuple[str, list[Any]]:
    sql = ""
    params: list[Any] = []
    for key, value in sorted(metadata_filter.items()):
        sql += " AND EXISTS (SELECT 1 FROM json_each(m.metadata) j WHERE j.key = ? AND j.value = ?)"
        params += [key, value]
    return sql, params
