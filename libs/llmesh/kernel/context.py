"""Per-request context carried in a ``ContextVar`` (set by the kernel interceptor).

Handlers and the outbound channel read it instead of threading request ids and
deadlines through every call.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from llmesh.kernel.errors import DeadlineExceeded

# Margin kept back from every outbound call so the caller still has time to answer.
OUTBOUND_MARGIN_S = 0.02
# Margin kept back from a local statement (SQL, a Redis command), so the service reports
# the cut-off itself (DEADLINE_EXCEEDED, reason STATEMENT_TIMEOUT) before the RPC ends.
STATEMENT_MARGIN_S = 0.03


@dataclass
class RequestContext:
    """What the kernel knows about the RPC being served."""

    request_id: str
    method: str
    deadline: float | None = None  # absolute, on the ``time.monotonic()`` clock
    principal: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


_current: ContextVar[RequestContext | None] = ContextVar("llmesh_request", default=None)


def current_request() -> RequestContext | None:
    """The context of the RPC being served by this task, if any."""
    return _current.get()


def set_request(ctx: RequestContext | None) -> object:
    """Install ``ctx`` for this task; returns a token for :func:`reset_request`."""
    return _current.set(ctx)


def reset_request(token: object) -> None:
    """Undo :func:`set_request`."""
    _current.reset(token)  # type: ignore[arg-type]


@contextlib.contextmanager
def deadline_scope(seconds: float, *, name: str) -> Iterator[RequestContext]:
    """Background work (a probe, a heartbeat) with a deadline of its own: outbound calls
    made inside get what is left of ``seconds``, like calls made for a request."""
    ctx = RequestContext(
        request_id=uuid.uuid4().hex, method=name, deadline=time.monotonic() + seconds
    )
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def remaining_s() -> float | None:
    """Time left on the current caller's deadline, or None."""
    ctx = _current.get()
    return None if ctx is None else ctx.remaining_s()


def outbound_timeout(default_s: float | None = None, *, share: float | None = None) -> float | None:
    """Timeout for a call made now on behalf of the current request.

    The one place deadlines are divided: the caller's remaining time minus a small
    margin, times ``share`` when the call is one branch of a fan-out that must leave
    time for the rest; ``default_s`` (a cap) when there is no caller deadline; the
    smaller of the two when both exist.
    """
    left = remaining_s()
    if left is None:
        return default_s
    budget = max(0.001, left - OUTBOUND_MARGIN_S)
    if share is not None:
        budget = max(0.001, budget * share)
    return budget if default_s is None else min(budget, default_s)


def statement_timeout(cap_s: float) -> float:
    """Seconds a local statement (SQL ``statement_timeout``, a Redis socket timeout) may
    run now on behalf of the current request.

    The one place a store reads the deadline: the caller's remaining time minus
    :data:`STATEMENT_MARGIN_S`, never more than ``cap_s``; ``cap_s`` when there is no
    caller deadline. Raises :class:`DeadlineExceeded` when no more than the margin is
    left: a statement started then could not finish and be reported in time.
    """
    left = remaining_s()
    if left is None:
        return cap_s
    if left <= STATEMENT_MARGIN_S:
        raise DeadlineExceeded(
            "deadline passed before the statement ran", reason="STATEMENT_TIMEOUT"
        )
    return min(cap_s, max(0.001, left - STATEMENT_MARGIN_S))


def statement_deadline() -> float | None:
    """The instant (``time.monotonic()`` clock) a local statement that checks the clock
    itself (SQLite's progress handler) must stop by: the caller's deadline minus
    :data:`STATEMENT_MARGIN_S`, or None without a caller deadline."""
    ctx = _current.get()
    if ctx is None or ctx.deadline is None:
        return None
    return ctx.deadline - STATEMENT_MARGIN_S


def deadline_passed() -> bool:
    """True when the current request has a deadline and it is (all but) spent: a store
    that gave up waiting (a pool, a lock) reports DEADLINE_EXCEEDED, not UNAVAILABLE."""
    left = remaining_s()
    return left is not None and left <= STATEMENT_MARGIN_S
