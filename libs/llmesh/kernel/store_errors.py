"""What a database failure means for the caller: the one classification of store errors.

Every store (memory sessions and memories, the gateway's keys and audit log) maps a
failure of its driver through :func:`sqlite_error` or :func:`postgres_error`:

- ``INVALID_ARGUMENT`` (no retry hint): a value the store cannot hold (NUL in
  PostgreSQL text, a number out of range, bad encoding, a string too big), too many
  values for one statement, a broken constraint;
- ``ALREADY_EXISTS``: a unique key taken;
- ``DEADLINE_EXCEEDED``: a statement cut off at the caller's deadline, or a wait (for a
  pooled connection, a lock) given up because the caller's time ran out;
- ``UNAVAILABLE`` with a retry hint, only for what passes on its own: busy or
  locked, connection lost or refused, pool exhausted, serialization failure,
  deadlock, I/O error, disk full, server shutting down;
- ``INTERNAL`` (no hint, logged with the stack by the store): anything else, a bug
  such as an unknown table.

Messages name what to fix and never carry a query or its parameters. Each function
returns None for an exception that is not a store failure (a domain error raised
inside a transaction passes through unchanged). Drivers are imported lazily: a
service that runs only SQLite never imports psycopg.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from llmesh.kernel.context import deadline_passed
from llmesh.kernel.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    LlmeshError,
    Unavailable,
)

if TYPE_CHECKING:
    import psycopg

STORE_RETRY_AFTER_S = 1.0
"""The retry hint of a transient store failure."""

# Primary result codes (sqlite_errorname without an extended suffix) that pass.
_TRANSIENT = {
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_PROTOCOL",
    "SQLITE_NOMEM",
    "SQLITE_READONLY",
}
_TOO_BIG = {"SQLITE_TOOBIG", "SQLITE_RANGE", "SQLITE_MISMATCH"}


def _code(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    # Extended codes read SQLITE_BUSY_SNAPSHOT, SQLITE_IOERR_WRITE...: keep the primary.
    parts = name.split("_")
    return "_".join(parts[:2]) if len(parts) > 2 else name


def sqlite_error(exc: BaseException, *, store: str = "store") -> LlmeshError | None:
    """The domain error for a failure raised by ``sqlite3`` (or by binding a parameter).

    None when ``exc`` is not a store failure (a domain error passes through as it is).
    """
    if isinstance(exc, LlmeshError):
        return None
    if isinstance(exc, OverflowError):  # a Python int beyond SQLite's 64-bit INTEGER
        return InvalidArgument(
            "a number in the request is out of range (beyond a 64-bit integer)",
            reason="VALUE_OUT_OF_RANGE",
        )
    if not isinstance(exc, sqlite3.Error):
        return None
    message = str(exc)
    code = _code(exc)
    if code == "SQLITE_INTERRUPT" or "interrupted" in message:
        return DeadlineExceeded(
            "query cut off at the caller's deadline", reason="STATEMENT_TIMEOUT"
        )
    if "too many SQL variables" in message or "too many terms" in message:
        return InvalidArgument(
            "the request names too many items for one query; send fewer (e.g. fewer ids)",
            reason="REQUEST_TOO_LARGE",
        )
    if isinstance(exc, sqlite3.DataError) or code in _TOO_BIG or "too big" in message:
        return InvalidArgument(
            f"the store cannot hold a value of the request ({message}); send a smaller one",
            reason="VALUE_OUT_OF_RANGE",
        )
    if isinstance(exc, sqlite3.IntegrityError):
        if "UNIQUE" in message:
            return AlreadyExists("a record with the same key exists already")
        return InvalidArgument(
            f"the request breaks a store constraint ({message})", reason="CONSTRAINT_VIOLATION"
        )
    if code in _TRANSIENT or "locked" in message or "disk I/O" in message:
        return Unavailable(
            f"{store} busy or unreachable ({code or 'sqlite'}); retry",
            reason="STORE_UNAVAILABLE",
            retry_after_s=STORE_RETRY_AFTER_S,
        )
    return LlmeshError(f"{store} fault ({code or type(exc).__name__})", reason="STORE_FAULT")


# SQLSTATE classes (first two characters) that pass on their own.
_TRANSIENT_CLASSES = {
    "08",  # connection exception
    "40",  # transaction rollback: serialization failure, deadlock
    "53",  # insufficient resources (disk full, out of memory, too many connections)
    "57",  # operator intervention (admin shutdown, cannot connect now); 57014 handled first
    "58",  # system error (I/O)
}
_TRANSIENT_STATES = {"55P03", "55006"}  # lock not available, object in use


def postgres_error(exc: BaseException, *, store: str = "store") -> LlmeshError | None:
    """The domain error for a failure raised by psycopg or its pool.

    None when ``exc`` is not a store failure (a domain error passes through as it is).
    A transient failure once the caller's deadline is (all but) spent is
    ``DEADLINE_EXCEEDED``: the store gave up waiting (for a pooled connection, a lock)
    because the caller's time ran out, which is not an outage to retry.
    """
    mapped = _postgres_error(exc, store)
    if isinstance(mapped, Unavailable) and deadline_passed():
        return DeadlineExceeded(
            f"deadline passed while waiting for the {store}", reason="STATEMENT_TIMEOUT"
        )
    return mapped


def _postgres_error(exc: BaseException, store: str) -> LlmeshError | None:
    if isinstance(exc, LlmeshError):
        return None
    import psycopg
    import psycopg.errors
    from psycopg_pool import PoolTimeout

    if isinstance(exc, psycopg.errors.QueryCanceled):
        return DeadlineExceeded(
            "query cut off at the caller's deadline", reason="STATEMENT_TIMEOUT"
        )
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError | OSError):
        return _unavailable(store, type(exc).__name__)
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.DataError) or state.startswith("22"):
        return InvalidArgument(
            f"the store cannot hold a value of the request: {_reason(exc)}; fix that value",
            reason="VALUE_NOT_STORABLE",
        )
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return AlreadyExists("a record with the same key exists already")
    if isinstance(exc, psycopg.IntegrityError) or state.startswith("23"):
        return InvalidArgument(
            f"the request breaks a store constraint: {_reason(exc)}",
            reason="CONSTRAINT_VIOLATION",
        )
    if state.startswith("54"):
        return InvalidArgument(
            f"the request is too large for the store: {_reason(exc)}; send less",
            reason="REQUEST_TOO_LARGE",
        )
    if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES:
        return _unavailable(store, state)
    if not state and isinstance(exc, psycopg.OperationalError):  # client-side: connection
        return _unavailable(store, type(exc).__name__)
    return LlmeshError(f"{store} fault ({state or type(exc).__name__})", reason="STORE_FAULT")


def _unavailable(store: str, what: str) -> Unavailable:
    return Unavailable(
        f"{store} busy or unreachable ({what}); retry",
        reason="STORE_UNAVAILABLE",
        retry_after_s=STORE_RETRY_AFTER_S,
    )


def _reason(exc: psycopg.Error) -> str:
    """The first line of the server's (or psycopg's) message: no query, no parameters."""
    diag = exc.diag.message_primary if exc.diag is not None else None
    return (diag or str(exc)).splitlines()[0][:200]
