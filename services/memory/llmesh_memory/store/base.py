"""The storage interface every backend implements, and the records it trades in.

Times are Unix seconds (``float``). Every method is namespace-scoped: nothing a
method returns ever belongs to another namespace. Backends raise
``llmesh.kernel.errors`` classes, each driver failure classified in one place
(``llmesh.kernel.store_errors``): ``Unavailable`` (store busy or down,
nothing written; retryable), ``DeadlineExceeded`` (the caller's deadline cut a
statement off), ``Aborted`` (version conflict), ``NotFound``, ``AlreadyExists``,
``InvalidArgument`` (a value the store cannot hold: NUL in text, a number out of
range, too many ids, an expiry past year 9999; never retried).
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from llmesh.kernel.errors import Aborted, InvalidArgument
from llmesh.kernel.timestamps import stored_expiry

from ..scoring import CorpusStats

Vector = npt.NDArray[np.float32]

IDEMPOTENCY_TTL_S = 24 * 3600.0
"""How long an idempotency key is remembered."""


@dataclass(frozen=True, slots=True)
class MessageIn:
    """A message to append: role (``llmesh.v1.ChatRole`` number) and text."""

    role: int
    content: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored message with the time it was appended."""

    role: int
    content: str
    created_at: float


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session's summary."""

    session_id: str
    version: int
    message_count: int
    created_at: float
    updated_at: float
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of an append: the new version, and whether it replays an earlier one."""

    version: int
    replayed: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredAppend:
    """What an append stored under its idempotency key (see ``MemoryStore.get_append``)."""

    session_id: str
    request_fingerprint: str
    version: int
    messages: tuple[MessageIn, ...]
    annotations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A memory to store. ``terms`` are its index terms; ``vector`` may be pending (None)."""

    text: str
    dedupe_key: str
    metadata: Mapping[str, str]
    terms: Sequence[str]
    vector: Vector | None
    expires_at: float | None
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """A stored memory."""

    id: str
    text: str
    metadata: Mapping[str, str]
    created_at: float
    expires_at: float | None
    embedded: bool


@dataclass(frozen=True, slots=True)
class RememberResult:
    """Outcome of storing a memory."""

    id: str
    duplicate: bool
    embedded: bool


@dataclass(frozen=True, slots=True)
class Candidate:
    """A search candidate: the memory, its cosine similarity (None: no vector) and terms."""

    memory: MemoryRecord
    semantic: float | None
    terms: Sequence[str]


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Candidates from the vector and keyword searches, and the namespace's term stats."""

    candidates: list[Candidate]
    stats: CorpusStats


@dataclass(frozen=True, slots=True)
class PendingEmbedding:
    """A memory whose vector is still missing."""

    namespace: str
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """What a backend searches for: a query vector (None: keyword only) and query terms."""

    vector: Vector | None
    terms: Sequence[str]
    limit: int
    metadata_filter: Mapping[str, str] = field(default_factory=dict)


class MemoryStore(abc.ABC):
    """Sessions and memories. One implementation per backend; one contract test suite."""

    name: str = "store"

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and apply migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``Unavailable`` when the store does not answer."""

    # -- sessions ---------------------------------------------------------------

    @abc.abstractmethod
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
        """Append atomically if ``expected_version`` matches; replay a known key.

        With ``request_fingerprint`` a replay is recognised by it instead of by the
        messages; ``annotations`` are kept with the key and returned on replays.
        """

    @abc.abstractmethod
    async def get_append(self, namespace: str, idempotency_key: str) -> StoredAppend | None:
        """What the append with ``idempotency_key`` stored, or None (unknown or purged)."""

    @abc.abstractmethod
    async def get_session(
        self, namespace: str, session_id: str, *, limit: int, now: float
    ) -> tuple[SessionRecord, list[StoredMessage]]:
        """The session and its last ``limit`` messages, oldest first; ``NotFound``."""

    @abc.abstractmethod
    async def list_sessions(
        self, namespace: str, *, page_size: int, after: tuple[float, str] | None, now: float
    ) -> list[SessionRecord]:
        """Live sessions by ``updated_at`` descending, after the keyset ``after``."""

    @abc.abstractmethod
    async def delete_session(self, namespace: str, session_id: str) -> int:
        """Delete a session; returns the messages deleted; ``NotFound``."""

    # -- memories ---------------------------------------------------------------

    @abc.abstractmethod
    async def insert_memories(
        self, namespace: str, memories: Sequence[NewMemory], *, now: float
    ) -> list[RememberResult]:
        """Store memories (deduplicated, idempotent), durably, in one transaction."""

    @abc.abstractmethod
    async def search(self, namespace: str, query: SearchQuery, *, now: float) -> SearchResult:
        """Vector and keyword candidates (their union, cosine for each) and term stats."""

    async def search_while(
        self,
        namespace: str,
        query: SearchQuery,
        vector: Awaitable[Vector | None],
        *,
        now: float,
    ) -> SearchResult:
        """:meth:`search` while the query vector is still being computed.

        ``query.vector`` is ignored: ``vector`` is awaited for it (None: keyword only).
        Backends override this to do their keyword work (term statistics, keyword
        candidates) meanwhile; the result is the same as ``search`` with that vector.
        """
        return await self.search(namespace, replace(query, vector=await vector), now=now)

    @abc.abstractmethod
    async def forget(
        self,
        namespace: str,
        *,
        ids: Sequence[str],
        metadata_filter: Mapping[str, str],
        created_before: float | None,
    ) -> int:
        """Delete memories matching every given condition; returns how many."""

    @abc.abstractmethod
    async def pending_embeddings(self, *, limit: int) -> list[PendingEmbedding]:
        """Memories without a vector (oldest first), across namespaces."""

    @abc.abstractmethod
    async def set_embeddings(self, items: Sequence[tuple[str, str, Vector]]) -> int:
        """Store vectors for ``(namespace, id, vector)``; returns how many were updated."""

    @abc.abstractmethod
    async def purge_expired(self, *, now: float) -> int:
        """Delete expired sessions, memories and idempotency keys; returns rows deleted."""


# -- helpers shared by backends ------------------------------------------------------


# Query terms found in more than this share of a namespace's documents do not pick
# keyword candidates when there is a query vector (the vector candidates still get
# keyword scores); their IDF is low and their postings are long.
COMMON_TERM_SHARE = 0.1
# Picked terms, rarest first, stop once their document counts add up to this.
KEYWORD_PICK_DOCS = 1000


def keyword_terms(
    query: SearchQuery, stats: CorpusStats, *, with_vector: bool | None = None
) -> list[str]:
    """The query terms whose matches become keyword candidates (rarest first).

    Without a vector (keyword-only) every known term may pick, rarest first, until their
    document counts reach ``KEYWORD_PICK_DOCS`` (at least one term picks).
    ``with_vector`` says whether the search has a vector (default: ``query.vector``),
    for a search that picks its keywords while the vector is still being computed.
    """
    if with_vector is None:
        with_vector = query.vector is not None
    cap = COMMON_TERM_SHARE * stats.docs if with_vector else stats.docs
    known = sorted(
        (t for t in query.terms if 0 < stats.df.get(t, 0) <= max(1.0, cap)),
        key=lambda t: stats.df[t],
    )
    picked: list[str] = []
    total = 0
    for term in known:
        if picked and total + stats.df[term] > KEYWORD_PICK_DOCS:
            break
        picked.append(term)
        total += stats.df[term]
    return picked


def fingerprint(*parts: object) -> str:
    """A stable hash of a request, to tell a replay from a key reused for something else."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def append_fingerprint(session_id: str, messages: Sequence[MessageIn]) -> str:
    """The fingerprint of an append (its session and messages, not its version)."""
    return fingerprint("append", session_id, [(m.role, m.content) for m in messages])


def append_record(
    *,
    version: int,
    session_id: str,
    messages: Sequence[MessageIn],
    request_fingerprint: str,
    annotations: Mapping[str, str] | None,
) -> dict[str, object]:
    """The ``result`` stored with an append's idempotency key (JSON)."""
    return {
        "version": version,
        "session_id": session_id,
        "messages": [[m.role, m.content] for m in messages],
        "request_fingerprint": request_fingerprint,
        "annotations": dict(annotations or {}),
    }


def replay_of(record: Mapping[str, Any]) -> AppendResult:
    """The replayed result of a stored append record."""
    return AppendResult(
        version=int(record["version"]),
        replayed=True,
        annotations=dict(record.get("annotations") or {}),
    )


def stored_append(record: Mapping[str, Any]) -> StoredAppend:
    """A stored append record (older records lack all but ``version``)."""
    return StoredAppend(
        session_id=str(record.get("session_id", "")),
        request_fingerprint=str(record.get("request_fingerprint", "")),
        version=int(record["version"]),
        messages=tuple(MessageIn(int(r), str(c)) for r, c in record.get("messages") or ()),
        annotations=dict(record.get("annotations") or {}),
    )


MAX_IDS_PER_STATEMENT = 500
"""Ids bound to one statement at most (SQLite allows 32,766 variables per statement)."""


def chunked(items: Sequence[str], size: int = MAX_IDS_PER_STATEMENT) -> list[Sequence[str]]:
    """``items`` in slices of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def session_record(row: Sequence[Any]) -> SessionRecord:
    """A session row ``(session_id, version, message_count, created_at, updated_at,
    expires_at)`` as a record; an out-of-range stored expiry reads as never."""
    session_id, version, message_count, created_at, updated_at, expires_at = row
    return SessionRecord(
        session_id,
        version,
        message_count,
        created_at,
        updated_at,
        stored_expiry(expires_at, what=f"session {session_id!r}"),
    )


def key_reused() -> InvalidArgument:
    """The error for an idempotency key replayed with a different request."""
    return InvalidArgument(
        "idempotency_key was already used for a different request",
        reason="IDEMPOTENCY_KEY_REUSED",
    )


def version_conflict(current: int, expected: int) -> Aborted:
    """The error for a stale ``expected_version``."""
    return Aborted(
        f"session is at version {current}, not {expected}",
        reason="VERSION_CONFLICT",
        metadata={"current_version": str(current), "expected_version": str(expected)},
        retry_after_s=0.0,
    )


def new_memory_id() -> str:
    """A fresh memory id."""
    import uuid

    return "mem_" + uuid.uuid4().hex


def cosine(matrix: Vector, vector: Vector) -> npt.NDArray[np.float32]:
    """Cosine similarity of each (unit) row with a (unit) vector."""
    out: npt.NDArray[np.float32] = matrix @ vector
    return out
