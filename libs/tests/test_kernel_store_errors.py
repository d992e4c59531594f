"""The one store-error table reads the caller's deadline: a wait given up because the
caller's time ran out is DEADLINE_EXCEEDED, the same wait with time left an outage."""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout

from llmesh.kernel.context import deadline_scope
from llmesh.kernel.errors import DeadlineExceeded, InvalidArgument, Unavailable
from llmesh.kernel.store_errors import postgres_error


def test_a_pool_wait_with_time_left_is_an_outage() -> None:
    with deadline_scope(30.0, name="t"):
        mapped = postgres_error(PoolTimeout("no connection"), store="key store")
    assert isinstance(mapped, Unavailable)
    assert mapped.reason == "STORE_UNAVAILABLE"


def test_a_transient_failure_at_the_deadline_is_deadline_exceeded() -> None:
    for exc in (PoolTimeout("no connection"), psycopg.OperationalError("connection lost")):
        with deadline_scope(0.0, name="t"):
            mapped = postgres_error(exc, store="memory store")
        assert isinstance(mapped, DeadlineExceeded), exc
        assert mapped.reason == "STATEMENT_TIMEOUT"
        assert "memory store" in str(mapped)


def test_a_client_fault_stays_one_whatever_the_deadline() -> None:
    with deadline_scope(0.0, name="t"):
        assert postgres_error(InvalidArgument("x")) is None  # domain errors pass through
        mapped = postgres_error(psycopg.DataError("bad value"), store="memory store")
    assert isinstance(mapped, InvalidArgument)
