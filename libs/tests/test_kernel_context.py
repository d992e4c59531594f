"""The kernel's one reading of the deadline for local statements (SQL, Redis)."""

from __future__ import annotations

import time

import pytest

from llmesh.kernel.context import (
    STATEMENT_MARGIN_S,
    deadline_passed,
    deadline_scope,
    statement_deadline,
    statement_timeout,
)
from llmesh.kernel.errors import DeadlineExceeded


def test_without_a_caller_deadline_the_cap_applies() -> None:
    assert statement_timeout(7.5) == 7.5
    assert statement_deadline() is None
    assert not deadline_passed()


def test_remaining_time_less_the_margin_capped() -> None:
    with deadline_scope(2.0, name="t"):
        limit = statement_timeout(30.0)
        assert 2.0 - STATEMENT_MARGIN_S - 0.5 < limit <= 2.0 - STATEMENT_MARGIN_S
        assert statement_timeout(0.25) == 0.25
        deadline = statement_deadline()
        assert deadline is not None
        assert 0 < deadline - time.monotonic() <= 2.0 - STATEMENT_MARGIN_S
        assert not deadline_passed()


@pytest.mark.parametrize("left_s", [0.0, STATEMENT_MARGIN_S / 2])
def test_a_spent_deadline_starts_nothing(left_s: float) -> None:
    with deadline_scope(left_s, name="t"):
        assert deadline_passed()
        with pytest.raises(DeadlineExceeded) as info:
            statement_timeout(10.0)
    assert info.value.reason == "STATEMENT_TIMEOUT"
