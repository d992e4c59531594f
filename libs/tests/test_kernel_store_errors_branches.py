"""The store error table, one driver failure per row (SQLite and psycopg exceptions built
here, no database): each maps to the status and reason a client can act on."""

from __future__ import annotations

import sqlite3

import psycopg
import psycopg.errors
import pytest
from psycopg_pool import PoolTimeout

from llmesh.kernel.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    LlmeshError,
    NotFound,
    Unavailable,
)
from llmesh.kernel.store_errors import STORE_RETRY_AFTER_S, postgres_error, sqlite_error


def _sqlite(cls: type[sqlite3.Error], message: str, name: str = "") -> sqlite3.Error:
    exc = cls(message)
    if name:
        exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


def test_sqlite_not_a_store_failure() -> None:
    assert sqlite_error(NotFound("x")) is None
    assert sqlite_error(ValueError("x")) is None


def test_sqlite_overflow_is_value_out_of_range() -> None:
    err = sqlite_error(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert isinstance(err, InvalidArgument)
    assert err.reason == "VALUE_OUT_OF_RANGE"


@pytest.mark.parametrize(
    ("exc", "cls", "reason"),
    [
        (_sqlite(sqlite3.OperationalError, "interrupted"), DeadlineExceeded, "STATEMENT_TIMEOUT"),
        (
            _sqlite(sqlite3.OperationalError, "x", "SQLITE_INTERRUPT"),
            DeadlineExceeded,
            "STATEMENT_TIMEOUT",
        ),
        (
            _sqlite(sqlite3.OperationalError, "too many SQL variables"),
            InvalidArgument,
            "REQUEST_TOO_LARGE",
        ),
        (
            _sqlite(sqlite3.OperationalError, "Expression tree: too many terms"),
            InvalidArgument,
            "REQUEST_TOO_LARGE",
        ),
        (_sqlite(sqlite3.DataError, "x"), InvalidArgument, "VALUE_OUT_OF_RANGE"),
        (
            _sqlite(sqlite3.OperationalError, "x", "SQLITE_TOOBIG"),
            InvalidArgument,
            "VALUE_OUT_OF_RANGE",
        ),
        (
            _sqlite(sqlite3.OperationalError, "string or blob too big"),
            InvalidArgument,
            "VALUE_OUT_OF_RANGE",
        ),
        (
            _sqlite(sqlite3.IntegrityError, "UNIQUE constraint failed: t.k"),
            AlreadyExists,
            "ALREADY_EXISTS",
        ),
        (
            _sqlite(sqlite3.IntegrityError, "CHECK constraint failed"),
            InvalidArgument,
            "CONSTRAINT_VIOLATION",
        ),
        (
            _sqlite(sqlite3.OperationalError, "x", "SQLITE_BUSY_SNAPSHOT"),
            Unavailable,
            "STORE_UNAVAILABLE",
        ),
        (_sqlite(sqlite3.OperationalError, "database is locked"), Unavailable, "STORE_UNAVAILABLE"),
        (_sqlite(sqlite3.OperationalError, "disk I/O error"), Unavailable, "STORE_UNAVAILABLE"),
        (
            _sqlite(sqlite3.DatabaseError, "file is not a database", "SQLITE_NOTADB"),
            LlmeshError,
            "STORE_FAULT",
        ),
        (_sqlite(sqlite3.ProgrammingError, "x"), LlmeshError, "STORE_FAULT"),
    ],
)
def test_sqlite_table(exc: sqlite3.Error, cls: type[LlmeshError], reason: str) -> None:
    err = sqlite_error(exc, store="memory store")
    assert type(err) is cls
    assert err is not None and err.reason == reason


def test_sqlite_messages_name_the_store_and_code() -> None:
    busy = sqlite_error(
        _sqlite(sqlite3.OperationalError, "x", "SQLITE_BUSY"), store="gateway store"
    )
    assert busy is not None
    assert busy.message == "gateway store busy or unreachable (SQLITE_BUSY); retry"
    assert busy.retry_after_s == STORE_RETRY_AFTER_S
    locked = sqlite_error(_sqlite(sqlite3.OperationalError, "database is locked"))
    assert locked is not None and locked.message == "store busy or unreachable (sqlite); retry"
    fault = sqlite_error(_sqlite(sqlite3.ProgrammingError, "x"))
    assert fault is not None and fault.message == "store fault (ProgrammingError)"
    named = sqlite_error(_sqlite(sqlite3.DatabaseError, "x", "SQLITE_CORRUPT"))
    assert named is not None and named.message == "store fault (SQLITE_CORRUPT)"


def _pg(sqlstate: str, message: str = "boom\nDETAIL: secret") -> psycopg.Error:
    return psycopg.errors.lookup(sqlstate)(message)


def test_postgres_not_a_store_failure() -> None:
    assert postgres_error(NotFound("x")) is None
    assert postgres_error(ValueError("x")) is None


@pytest.mark.parametrize(
    ("exc", "cls", "reason"),
    [
        (_pg("57014"), DeadlineExceeded, "STATEMENT_TIMEOUT"),
        (PoolTimeout("no connection"), Unavailable, "STORE_UNAVAILABLE"),
        (psycopg.InterfaceError("closed"), Unavailable, "STORE_UNAVAILABLE"),
        (ConnectionRefusedError("refused"), Unavailable, "STORE_UNAVAILABLE"),
        (_pg("22001"), InvalidArgument, "VALUE_NOT_STORABLE"),
        (psycopg.DataError("x"), InvalidArgument, "VALUE_NOT_STORABLE"),
        (_pg("23505"), AlreadyExists, "ALREADY_EXISTS"),
        (_pg("23503"), InvalidArgument, "CONSTRAINT_VIOLATION"),
        (psycopg.IntegrityError("x"), InvalidArgument, "CONSTRAINT_VIOLATION"),
        (_pg("54000"), InvalidArgument, "REQUEST_TOO_LARGE"),
        (_pg("08006"), Unavailable, "STORE_UNAVAILABLE"),
        (_pg("40001"), Unavailable, "STORE_UNAVAILABLE"),
        (_pg("53300"), Unavailable, "STORE_UNAVAILABLE"),
        (_pg("57P01"), Unavailable, "STORE_UNAVAILABLE"),
        (_pg("58030"), Unavailable, "STORE_UNAVAILABLE"),
        (_pg("55P03"), Unavailable, "STORE_UNAVAILABLE"),
        (_pg("55006"), Unavailable, "STORE_UNAVAILABLE"),
        (psycopg.OperationalError("connection failed"), Unavailable, "STORE_UNAVAILABLE"),
        (_pg("42P01"), LlmeshError, "STORE_FAULT"),
        (psycopg.ProgrammingError("x"), LlmeshError, "STORE_FAULT"),
    ],
)
def test_postgres_table(exc: BaseException, cls: type[LlmeshError], reason: str) -> None:
    err = postgres_error(exc, store="memory store")
    assert type(err) is cls
    assert err is not None and err.reason == reason


def test_postgres_messages_keep_the_first_line_only() -> None:
    err = postgres_error(_pg("22001", "value too long for type character varying(5)\nsecret"))
    assert err is not None
    assert err.message == (
        "the store cannot hold a value of the request: value too long for type character "
        "varying(5); fix that value"
    )
    fault = postgres_error(_pg("42P01"), store="registry store")
    assert fault is not None and fault.message == "registry store fault (42P01)"
    client = postgres_error(psycopg.ProgrammingError("x"))
    assert client is not None and client.message == "store fault (ProgrammingError)"
    pool = postgres_error(PoolTimeout("x"), store="gateway store")
    assert pool is not None
    assert pool.message == "gateway store busy or unreachable (PoolTimeout); retry"
    assert pool.retry_after_s == STORE_RETRY_AFTER_S
