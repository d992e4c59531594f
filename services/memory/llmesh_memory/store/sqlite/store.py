"""SQLite backend: one file, WAL, FTS5 for keywords, float32 vectors searched in NumPy.

Writes go through ONE connection on ONE thread (so concurrent writers queue instead
of failing with "database is locked"); reads use a small pool of threads with their
own connections (WAL lets them run beside the writer). Failures are classified in
one place (``llmesh.kernel.store_errors``): client faults are ``INVALID_ARGUMENT``,
only a busy or unreachable file is ``UNAVAILABLE``. ``synchronous=FULL``: a write is
acknowledged only after it reached the disk. The caller's remaining deadline is
enforced with a progress handler that interrupts a statement running past it.

This module is the plumbing (threads, connections, transactions, the vector-index
cache); the SQL lives in ``sessions``, ``memories`` and ``search``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

import grpc

from llmesh.kernel.context import statement_deadline
from llmesh.kernel.errors import DeadlineExceeded, Unavailable
from llmesh.kernel.logging import get_logger
from llmesh.kernel.store_errors import sqlite_error

from ..base import (
    AppendResult,
    MemoryStore,
    MessageIn,
    NewMemory,
    PendingEmbedding,
    RememberResult,
    SearchQuery,
    SearchResult,
    SessionRecord,
    StoredAppend,
    StoredMessage,
    Vector,
)
from ..vectors import VectorIndex
from . import memories as memory_sql
from . import schema, search, sessions

T = TypeVar("T")
log = get_logger(__name__)


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
            conn = schema.connect(self.path, busy_ms=self._busy_ms)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if self._closed:
            raise Unavailable("memory store is closed", retry_after_s=1.0)
        deadline = statement_deadline()

        def call() -> T:
            conn = self._connection()
            if deadline is not None:
                conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            try:
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded("deadline passed before the query ran")
                return fn(conn)
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.rollback()
                mapped = sqlite_error(exc, store="memory store")
                if mapped is None:
                    raise
                if mapped.code is grpc.StatusCode.INTERNAL:
                    log.error("sqlite store fault", exc_info=exc)
                raise mapped from None
            finally:
                conn.set_progress_handler(None, 0)

        executor = self._writer if write else self._readers
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    async def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction on the writer thread."""

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return result

        return await self._run(transaction, write=True)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(schema.migrate, write=True)

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

    # -- vector index cache (event loop only) --------------------------------------------

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
        request_fingerprint: str = "",
        annotations: Mapping[str, str] | None = None,
    ) -> AppendResult:
        return await self._write(
            lambda c: sessions.append(
                c,
                namespace,
                session_id,
                messages,
                expected_version=expected_version,
                idempotency_key=idempotency_key,
                ttl_s=ttl_s,
                now=now,
                request_fingerprint=request_fingerprint,
                annotations=annotations,
            )
        )

    async def get_append(self, namespace: str, idempotency_key: str) -> StoredAppend | None:
        return await self._run(
            lambda c: sessions.get_append(c, namespace, idempotency_key), write=False
        )

    async def get_session(
        self, namespace: str, session_id: str, *, limit: int, now: float
    ) -> tuple[SessionRecord, list[StoredMessage]]:
        return await self._run(
            lambda c: sessions.get(c, namespace, session_id, limit=limit, now=now), write=False
        )

    async def list_sessions(
        self, namespace: str, *, page_size: int, after: tuple[float, str] | None, now: float
    ) -> list[SessionRecord]:
        return await self._run(
            lambda c: sessions.list_page(c, namespace, page_size=page_size, after=after, now=now),
            write=False,
        )

    async def delete_session(self, namespace: str, session_id: str) -> int:
        return await self._write(lambda c: sessions.delete(c, namespace, session_id))

    # -- memories ---------------------------------------------------------------------

    async def insert_memories(
        self, namespace: str, memories: Sequence[NewMemory], *, now: float
    ) -> list[RememberResult]:
        done = await self._write(lambda c: memory_sql.insert(c, namespace, memories, now=now))
        if done.replaced:
            self._invalidate(namespace)
        else:
            self._index_add(namespace, done.added)
        return done.results

    async def search(self, namespace: str, query: SearchQuery, *, now: float) -> SearchResult:
        return await self._search(namespace, query, now=now, vector=None)

    async def search_while(
        self,
        namespace: str,
        query: SearchQuery,
        vector: Awaitable[Vector | None],
        *,
        now: float,
    ) -> SearchResult:
        """The keyword part runs on a reader thread, which then waits for the vector."""
        handoff: Future[Vector | None] = Future()
        deadline = statement_deadline()

        def wait() -> Vector | None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return handoff.result(timeout=left)
            except FutureTimeout:
                raise DeadlineExceeded("deadline passed while the query was embedded") from None

        async def feed() -> None:
            try:
                result = await vector
            except asyncio.CancelledError:
                handoff.cancel()
                raise
            except Exception as exc:  # reaches the search through wait()
                if not handoff.done():
                    handoff.set_exception(exc)
                return
            if not handoff.done():
                handoff.set_result(result)

        feeder = asyncio.ensure_future(feed())
        try:
            return await self._search(namespace, query, now=now, vector=wait)
        finally:
            handoff.cancel()  # a reader still waiting gives up (no-op once set)
            if not feeder.done():
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder

    async def _search(
        self,
        namespace: str,
        query: SearchQuery,
        *,
        now: float,
        vector: Callable[[], Vector | None] | None,
    ) -> SearchResult:
        index = self._indexes.get(namespace)
        generation = self._generation.get(namespace, 0)
        snapshot = index.snapshot() if index is not None else None
        built: list[VectorIndex] = []
        result = await self._run(
            lambda c: search.search(
                c, namespace, query=query, now=now, snapshot=snapshot, built=built, vector=vector
            ),
            write=False,
        )
        if built and self._generation.get(namespace, 0) == generation:
            self._indexes[namespace] = built[0]
        return result

    async def forget(
        self,
        namespace: str,
        *,
        ids: Sequence[str],
        metadata_filter: Mapping[str, str],
        created_before: float | None,
    ) -> int:
        deleted = await self._write(
            lambda c: memory_sql.forget(
                c,
                namespace,
                ids=ids,
                metadata_filter=metadata_filter,
                created_before=created_before,
            )
        )
        if deleted:
            self._invalidate(namespace)
        return deleted

    async def pending_embeddings(self, *, limit: int) -> list[PendingEmbedding]:
        return await self._run(lambda c: memory_sql.pending(c, limit=limit), write=False)

    async def set_embeddings(self, items: Sequence[tuple[str, str, Vector]]) -> int:
        done = await self._write(lambda c: memory_sql.set_vectors(c, items))
        for namespace, rowid, vector in done:
            self._index_add(namespace, [(rowid, vector)])
        return len(done)

    async def purge_expired(self, *, now: float) -> int:
        touched: set[str] = set()
        count = await self._write(lambda c: memory_sql.purge(c, now=now, touched=touched))
        for namespace in touched:
            self._invalidate(namespace)
        return count
