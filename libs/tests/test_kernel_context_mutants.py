"""Deadline arithmetic of ``kernel.context`` at its boundaries, on a fixed clock (kills
context.py's mutants: docs/quality.md)."""

from __future__ import annotations

import time

import pytest

from llmesh.kernel import context
from llmesh.kernel.context import (
    OUTBOUND_MARGIN_S,
    STATEMENT_MARGIN_S,
    RequestContext,
    current_request,
    deadline_passed,
    deadline_scope,
    outbound_timeout,
    remaining_s,
    reset_request,
    set_request,
    statement_deadline,
    statement_timeout,
)
from llmesh.kernel.errors import DeadlineExceeded

NOW = 1000.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context.time, "monotonic", lambda: NOW)


def _serving(left_s: float | None) -> object:
    deadline = None if left_s is None else NOW + left_s
    return set_request(RequestContext(request_id="r", method="/m", deadline=deadline))


def test_margins_are_the_documented_ones() -> None:
    assert OUTBOUND_MARGIN_S == 0.02
    assert STATEMENT_MARGIN_S == 0.03


def test_request_context_remaining(clock: None) -> None:
    assert RequestContext("r", "/m").remaining_s() is None
    assert RequestContext("r", "/m", deadline=NOW + 2.5).remaining_s() == 2.5
    assert RequestContext("r", "/m", deadline=NOW - 4.0).remaining_s() == 0.0
    ctx = RequestContext("r", "/m")
    assert ctx.principal is None
    assert ctx.attributes == {}
    assert RequestContext("r", "/m").attributes is not ctx.attributes


def test_set_and_reset_request() -> None:
    assert current_request() is None
    ctx = RequestContext("r", "/m")
    token = set_request(ctx)
    try:
        assert current_request() is ctx
    finally:
        reset_request(token)
    assert current_request() is None
    assert remaining_s() is None


def test_deadline_scope_installs_a_named_context(clock: None) -> None:
    with deadline_scope(4.0, name="probe") as ctx:
        assert current_request() is ctx
        assert ctx.method == "probe"
        assert ctx.deadline == NOW + 4.0
        assert len(ctx.request_id) == 32
        int(ctx.request_id, 16)
        assert remaining_s() == 4.0
    assert current_request() is None


def test_deadline_scope_resets_on_error() -> None:
    with pytest.raises(RuntimeError), deadline_scope(1.0, name="x"):
        raise RuntimeError
    assert current_request() is None


def test_outbound_timeout_without_a_caller() -> None:
    assert outbound_timeout() is None
    assert outbound_timeout(3.0) == 3.0
    assert outbound_timeout(3.0, share=0.5) == 3.0


def test_outbound_timeout_without_a_caller_deadline(clock: None) -> None:
    token = _serving(None)
    try:
        assert outbound_timeout(7.0) == 7.0
        assert outbound_timeout() is None
    finally:
        reset_request(token)


@pytest.mark.parametrize(
    ("left", "default", "share", "expected"),
    [
        (1.0, None, None, 0.98),
        (1.0, 5.0, None, 0.98),
        (1.0, 0.5, None, 0.5),
        (1.0, None, 0.5, 0.49),
        (1.0, 0.3, 0.5, 0.3),
        (0.01, None, None, 0.001),
        (0.0, None, None, 0.001),
        (0.03, None, 0.001, 0.001),
        (2.02, None, 0.25, 0.5),
    ],
)
def test_outbound_timeout_divides_the_caller_deadline(
    clock: None, left: float, default: float | None, share: float | None, expected: float
) -> None:
    token = _serving(left)
    try:
        assert outbound_timeout(default, share=share) == pytest.approx(expected, abs=1e-9)
    finally:
        reset_request(token)


@pytest.mark.parametrize(
    ("left", "cap", "expected"),
    [
        (1.0, 10.0, 0.97),
        (1.0, 0.5, 0.5),
        (STATEMENT_MARGIN_S + 0.0005, 10.0, 0.001),
        (STATEMENT_MARGIN_S + 0.002, 10.0, 0.002),
    ],
)
def test_statement_timeout_is_the_remaining_time_less_the_margin(
    clock: None, left: float, cap: float, expected: float
) -> None:
    token = _serving(left)
    try:
        assert statement_timeout(cap) == pytest.approx(expected, abs=1e-9)
        assert not deadline_passed()
        assert statement_deadline() == pytest.approx(NOW + left - STATEMENT_MARGIN_S)
    finally:
        reset_request(token)


@pytest.mark.parametrize("left", [STATEMENT_MARGIN_S, STATEMENT_MARGIN_S - 0.001, 0.0, -1.0])
def test_no_more_than_the_margin_left_is_deadline_exceeded(clock: None, left: float) -> None:
    token = _serving(left)
    try:
        assert deadline_passed()
        with pytest.raises(DeadlineExceeded) as info:
            statement_timeout(10.0)
    finally:
        reset_request(token)
    assert info.value.reason == "STATEMENT_TIMEOUT"
    assert info.value.message == "deadline passed before the statement ran"


class _Left(RequestContext):
    """A request with exactly ``left`` seconds remaining (no float error from a clock)."""

    def __init__(self, left: float) -> None:
        super().__init__(request_id="r", method="/m", deadline=0.0)
        self.left = left

    def remaining_s(self) -> float:
        return self.left


def test_exactly_the_margin_left_is_spent() -> None:
    token = set_request(_Left(STATEMENT_MARGIN_S))
    try:
        assert deadline_passed()
        with pytest.raises(DeadlineExceeded):
            statement_timeout(10.0)
    finally:
        reset_request(token)
    token = set_request(_Left(STATEMENT_MARGIN_S + 1e-9))
    try:
        assert not deadline_passed()
        assert statement_timeout(10.0) == 0.001
    finally:
        reset_request(token)


def test_without_a_deadline_nothing_has_passed(clock: None) -> None:
    token = _serving(None)
    try:
        assert statement_timeout(4.0) == 4.0
        assert statement_deadline() is None
        assert not deadline_passed()
    finally:
        reset_request(token)
    assert statement_deadline() is None
    assert not deadline_passed()


def test_the_real_clock_is_monotonic() -> None:
    with deadline_scope(30.0, name="real") as ctx:
        assert ctx.deadline is not None
        assert 0 < ctx.deadline - time.monotonic() <= 30.0
