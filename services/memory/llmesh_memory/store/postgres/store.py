"""PostgreSQL backend: psycopg 3 async pool, pgvector HNSW, tsvector GIN.

Every operation runs in one transaction whose ``statement_timeout`` is the caller's
remaining deadline (``DEADLINE_EXCEEDED`` when it fires). Failures are classified
in one place (``llmesh.kernel.store_errors``): a value the store cannot hold is
``INVALID_ARGUMENT``, only transient failures are ``UNAVAILABLE`` with a retry
hint. A write is acknowledged only after COMMIT returned. Migrations are applied
at start (``schema``).

This module is the plumbing (pool, transactions, error mapping); the SQL lives in
``sessions``, ``memories`` and ``search``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from psycopg import AsyncConnection
from psycopg.adapt import Dumper
from psycopg.types import TypeInfo
from psycopg_pool import AsyncConnectionPool

from llmesh.kernel.context import statement_timeout
from llmesh.kernel.errors import Unavailable
from llmesh.kernel.logging import get_logger
from llmesh.kernel.store_errors import postgres_error

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
from . import memories as memory_sql
from . import schema, search, sessions

log = get_logger(__name__)

# While the last ping found the database unreachable, a call waits at most this long for a
# pooled connection, then fails UNAVAILABLE (retry hint) at once instead of holding on for
# connect_timeout_s or until its deadline (a refusal, not a wait: issue 19).
UNREACHABLE_WAIT_S = 0.5


class PostgresStore(MemoryStore):
    """The production store."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        ef_search: int = 200,
        ef_search_min: int = 40,
        exact_search_max_rows: int = 2_000,
        statement_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.plan = search.VectorPlan(
            ef_search=ef_search,
            exact_search_max_rows=exact_search_max_rows,
            ef_search_min=ef_search_min,
        )
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
        self.unreachable = False

    async def _configure(self, conn: AsyncConnection[Any]) -> None:
        if self._vector_dumper is None:
            info = await TypeInfo.fetch(conn, "vector")
            if info is None:
                raise Unavailable("the pgvector extension is not installed", retry_after_s=5.0)
            self._vector_dumper = type("VectorDumper", (schema.VectorDumper,), {"oid": info.oid})
        conn.adapters.register_dumper(np.ndarray, self._vector_dumper)

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            mapped = postgres_error(exc, store="memory store")
            if mapped is None:
                raise
            if mapped.code is grpc.StatusCode.INTERNAL:
                log.error("postgres store fault", exc_info=exc)
            raise mapped from None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        async with self._errors():
            wait_s = statement_timeout(self.connect_timeout_s)  # DEADLINE_EXCEEDED if spent
            if self.unreachable:
                wait_s = min(wait_s, UNREACHABLE_WAIT_S)
            if not self._opened:
                await self.start()
            async with (
                self._pool.connection(timeout=wait_s) as conn,
                conn.transaction(),
            ):
                self.unreachable = False
                # The caller's time left (the kernel keeps a margin back, so the cut-off
                # is reported by us before the RPC itself times out).
                limit_ms = max(1, round(statement_timeout(self.statement_timeout_s) * 1000))
                await conn.execute(f"SET LOCAL statement_timeout = {limit_ms}")
                yield conn

    async def start(self) -> None:
        async with self._errors():
            async with (
                await AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s))
                ) as conn,
                conn.transaction(),
            ):
                await schema.migrate(conn)
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False

    async def ping(self) -> None:
        try:
            async with self._transaction() as conn:
                await conn.execute("SELECT 1")
        except Unavailable:
            self.unreachable = True  # calls fail fast until a connection works again
            raise

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
        request_fingerprint: str = "",
        annotations: Mapping[str, str] | None = None,
    ) -> AppendResult:
        async with self._transaction() as conn:
            return await sessions.append(
                conn,
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

    async def get_append(self, namespace: str, idempotency_key: str) -> StoredAppend | None:
        async with self._transaction() as conn:
            return await sessions.get_append(conn, namespace, idempotency_key)

    async def get_session(
        self, namespace: str, session_id: str, *, limit: int, now: float
    ) -> tuple[SessionRecord, list[StoredMessage]]:
        async with self._transaction() as conn:
            return await sessions.get(conn, namespace, session_id, limit=limit, now=now)

    async def list_sessions(
        self, namespace: str, *, page_size: int, after: tuple[float, str] | None, now: float
    ) -> list[SessionRecord]:
        async with self._transaction() as conn:
            return await sessions.list_page(
                conn, namespace, page_size=page_size, after=after, now=now
            )

    async def delete_session(self, namespace: str, session_id: str) -> int:
        async with self._transaction() as conn:
            return await sessions.delete(conn, namespace, session_id)

    # -- memories ------------------------------------------------------------------------

    async def insert_memories(
        self, namespace: str, memories: Sequence[NewMemory], *, now: float
    ) -> list[RememberResult]:
        async with self._transaction() as conn:
            return await memory_sql.insert(conn, namespace, memories, now=now)

    async def search(self, namespace: str, query: SearchQuery, *, now: float) -> SearchResult:
        async with self._transaction() as conn:
            return await search.search(conn, namespace, query, now=now, plan=self.plan)

    async def search_while(
        self,
        namespace: str,
        query: SearchQuery,
        vector: Awaitable[Vector | None],
        *,
        now: float,
    ) -> SearchResult:
        """Term statistics and keyword candidates are read while the vector is computed."""
        async with self._transaction() as conn:
            return await search.search(
                conn, namespace, query, now=now, plan=self.plan, vector=vector
            )

    async def forget(
        self,
        namespace: str,
        *,
        ids: Sequence[str],
        metadata_filter: Mapping[str, str],
        created_before: float | None,
    ) -> int:
        async with self._transaction() as conn:
            return await memory_sql.forget(
                conn,
                namespace,
                ids=ids,
                metadata_filter=metadata_filter,
                created_before=created_before,
            )

    async def pending_embeddings(self, *, limit: int) -> list[PendingEmbedding]:
        async with self._transaction() as conn:
            return await memory_sql.pending(conn, limit=limit)

    async def set_embeddings(self, items: Sequence[tuple[str, str, Vector]]) -> int:
        async with self._transaction() as conn:
            return await memory_sql.set_vectors(conn, items)

    async def purge_expired(self, *, now: float) -> int:
        async with self._transaction() as conn:
            return await memory_sql.purge(conn, now=now)
