"""What a SQLite failure means for the caller: the one classification of this backend.

Only a failure that may pass on its own (the file busy or locked by another process,
an I/O error, the disk full) is ``UNAVAILABLE`` with a retry hint; a statement cut
off at the caller's deadline is ``DEADLINE_EXCEEDED``; a request SQLite cannot hold
(too many values, a number out of range, a string too big) is ``INVALID_ARGUMENT``
and retrying it would fail the same way; anything else is a fault of the store itself
(``INTERNAL``, no retry hint, logged by the error interceptor).
"""

from __future__ import annotations

import sqlite3

from llmesh.kernel.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    LlmeshError,
    Unavailable,
)

RETRY_AFTER_S = 1.0

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


def classify(exc: BaseException) -> LlmeshError | None:
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
            f"memory store busy or unreachable ({code or 'sqlite'}); retry",
            reason="STORE_UNAVAILABLE",
            retry_after_s=RETRY_AFTER_S,
        )
    return LlmeshError(f"memory store fault ({code or type(exc).__name__})", reason="STORE_FAULT")
