"""Per-worker circuit breaker: opens after consecutive failures, probes when half-open."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Closed -> (``threshold`` consecutive failures) -> open for ``cooldown_s`` ->
    half-open: one probe call; success closes it, failure re-opens it."""

    threshold: int = 5
    cooldown_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    state: str = CLOSED
    opened_at: float = 0.0
    probing: bool = field(default=False)

    def current(self) -> str:
        if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
            self.probing = False
        return self.state

    def available(self) -> bool:
        """Whether a call may be sent now (without claiming the half-open probe)."""
        state = self.current()
        return state == CLOSED or (state == HALF_OPEN and not self.probing)

    def acquire(self) -> bool:
        """Claim permission for one call (the single probe when half-open)."""
        state = self.current()
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.state = CLOSED
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.state = OPEN
            self.opened_at = self.clock()
            self.probing = False

    def release(self) -> None:
        """A claimed call ended without a verdict on the worker (e.g. cancelled)."""
        if self.state == HALF_OPEN:
            self.probing = False
