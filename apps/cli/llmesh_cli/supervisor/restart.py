"""When to restart a crashed child: exponential backoff and a crash-loop circuit."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    """Backoff ``initial_s``, doubling to ``max_s``; give up after ``max_crashes``
    crashes within ``window_s``. A child that ran ``stable_s`` resets the backoff.
    """

    initial_s: float = 1.0
    max_s: float = 60.0
    max_crashes: int = 5
    window_s: float = 300.0
    stable_s: float = 60.0
    _crashes: deque[float] = field(default_factory=deque)
    _consecutive: int = 0

    def on_crash(self, *, now: float, ran_for_s: float) -> float | None:
        """Record a crash at ``now``; the delay before restarting, or None to give up."""
        if ran_for_s >= self.stable_s:
            self._consecutive = 0
        self._consecutive += 1
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.window_s:
            self._crashes.popleft()
        if len(self._crashes) >= self.max_crashes:
            return None
        return float(min(self.max_s, self.initial_s * 2 ** (self._consecutive - 1)))

    @property
    def recent_crashes(self) -> int:
        return len(self._crashes)
