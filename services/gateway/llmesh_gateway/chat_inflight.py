"""Chat turns being generated in this gateway process, by idempotency key.

A second call with the key of a turn still in flight here (a client's retry sent
while the first attempt still runs, or the same request sent twice at once) waits for
the first to finish and then goes on as usual: it finds the stored turn and replays
it, or, when the first failed before storing anything, generates the turn itself. So
one process never generates the same turn twice. The wait is bounded by the caller's
deadline (DEADLINE_EXCEEDED when it passes first).

Across gateway replicas two such calls may both generate; the memory service's
append with the idempotency key still stores the turn exactly once, and the later
call reports ``replayed`` with the version of the stored turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from llmesh.kernel.context import outbound_timeout
from llmesh.kernel.errors import DeadlineExceeded


class TurnsInFlight:
    """Which (namespace, key) turns are being generated now; one per gateway."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, str], asyncio.Event] = {}
        self._waiting = 0

    @property
    def running(self) -> int:
        """Turns being generated now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Calls waiting for a turn with their key to finish."""
        return self._waiting

    @contextlib.asynccontextmanager
    async def claim(self, namespace: str, key: str) -> AsyncIterator[None]:
        """Hold ``key`` while the body runs, after any call holding it has finished."""
        slot = (namespace, key)
        while (running := self._running.get(slot)) is not None:
            self._waiting += 1
            try:
                async with asyncio.timeout(outbound_timeout()):
                    await running.wait()
            except TimeoutError:
                raise DeadlineExceeded(
                    "deadline exceeded while an earlier call with the same idempotency key "
                    "was still generating this turn; retry to get its reply"
                ) from None
            finally:
                self._waiting -= 1
        finished = asyncio.Event()
        self._running[slot] = finished
        try:
            yield
        finally:
            del self._running[slot]
            finished.set()
