"""Queue-wait forecast: how long until a queued request gets its first token.

Admission compares the forecast with the caller's remaining deadline, so a request
that cannot start in time is refused at once (``QUEUE_WAIT_TOO_LONG``) instead of
waiting out its deadline in the queue. The figures come from the MLX thread: a
moving average of the time one loop turn with decoding takes (a decode step for the
whole batch, plus any prefill chunk and the configured ``decode_delay_ms``), and of
the share of its ``max_tokens`` a finished request generated.

The forecast replays the queue in FIFO order against the batch slots: a slot frees
when its request has generated its expected tokens (``max_tokens`` x that share),
and the next queued request takes it.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class ServiceRate:
    """Moving averages (exponentially weighted) of the engine's pace."""

    alpha: float = 0.2
    step_s: float = 0.0
    """Seconds per loop turn that decoded (0: not measured yet: admit everything)."""
    share_used: float = 1.0
    """Share of ``max_tokens`` a finished request generated (1 until measured)."""
    measured: bool = False

    def observe_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s <= 0 else self._blend(self.step_s, seconds)

    def observe_finished(self, tokens: int, max_tokens: int) -> None:
        if max_tokens <= 0:
            return
        share = min(1.0, tokens / max_tokens)
        self.share_used = share if not self.measured else self._blend(self.share_used, share)
        self.measured = True

    def _blend(self, old: float, new: float) -> float:
        return (1 - self.alpha) * old + self.alpha * new

    def expected_tokens(self, max_tokens: int) -> float:
        """Tokens a request allowed ``max_tokens`` is expected to generate."""
        return max(1.0, max_tokens * self.share_used)

    def steps_left(self, max_tokens: int, generated: int) -> float:
        """Decode steps until a running request is expected to finish (at least 1)."""
        expected = self.expected_tokens(max_tokens)
        if generated < expected:
            return max(1.0, expected - generated)
        # Past the average already: assume it runs half of what it may still take.
        return max(1.0, (max_tokens - generated) / 2)


def slot_heap(slots: int, running_steps_left: Sequence[float]) -> list[float]:
    """A min-heap of when (in steps from now) each batch slot is free."""
    heap = sorted(running_steps_left)[:slots]
    heap.extend([0.0] * (slots - len(heap)))
    heapq.heapify(heap)
    return heap


def take_slot(heap: list[float], steps: float) -> float:
    """The step at which the next request in line starts; its slot is then busy for
    ``steps`` more steps."""
    start = heapq.heappop(heap)
    heapq.heappush(heap, start + steps)
    return start


def first_token_s(start_step: float, step_s: float) -> float:
    """Seconds until a request that starts at ``start_step`` has its first token."""
    return (start_step + 1) * step_s
