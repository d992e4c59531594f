"""What a PostgreSQL failure means for the caller: the one classification of this backend.

By SQLSTATE class: ``22`` data exceptions (a NUL byte in text, a number out of range,
bad encoding) and ``23`` integrity violations are the request's fault
(``INVALID_ARGUMENT`` / ``ALREADY_EXISTS``); ``54`` program limits (a value or a
statement too large) likewise. A statement cut off at the caller's deadline
(``57014``) is ``DEADLINE_EXCEEDED``. Only failures that pass on their own
(connection lost or refused, pool exhausted, serialization failure or deadlock,
lock not available, server shutting down, out of resources) are ``UNAVAILABLE``
with a retry hint. Anything else is a fault of the store (``INTERNAL``, no hint).
"""

from __future__ import annotations

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout

from llmesh.kernel.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    LlmeshError,
    Unavailable,
)

RETRY_AFTER_S = 1.0

# SQLSTATE classes (first two characters) that pass on their own.
_TRANSIENT_CLASSES = {
    "08",  # connection exception
    "40",  # transaction rollback: serialization failure, deadlock
    "53",  # insufficient resources (disk full, out of memory, too many connections)
    "57",  # operator intervention (admin shutdown, cannot connect now); 57014 handled first
    "58",  # system error (I/O)
}
_TRANSIENT_STATES = {"55P03", "55006"}  # lock not available, object in use


def classify(exc: BaseException) -> LlmeshError | None:
    """The domain error for a failure raised by psycopg or its pool.

    None when ``exc`` is not a store failure (a domain error passes through as it is).
    """
    if isinstance(exc, LlmeshError):
        return None
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return DeadlineExceeded(
            "query cut off at the caller's deadline", reason="STATEMENT_TIMEOUT"
        )
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError | OSError):
        return _unavailable(type(exc).__name__)
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
        return _unavailable(state)
    if not state and isinstance(exc, psycopg.OperationalError):  # client-side: connection
        return _unavailable(type(exc).__name__)
    return LlmeshError(f"memory store fault ({state or type(exc).__name__})", reason="STORE_FAULT")


def _unavailable(what: str) -> Unavailable:
    return Unavailable(
        f"memory store busy or unreachable ({what}); retry",
        reason="STORE_UNAVAILABLE",
        retry_after_s=RETRY_AFTER_S,
    )


def _reason(exc: psycopg.Error) -> str:
    """The first line of the server's (or psycopg's) message: no query, no parameters."""
    diag = exc.diag.message_primary if exc.diag is not None else None
    return (diag or str(exc)).splitlines()[0][:200]
