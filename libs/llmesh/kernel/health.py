"""Standard ``grpc.health.v1`` with the service names llmesh probes use.

Names: ``""`` and every full service name follow readiness; ``liveness`` says the
process can make progress; ``readiness`` says its dependencies answer (model
loaded, store reachable, routable snapshot ...). Shutdown flips all of them to
NOT_SERVING first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from grpc_health.v1 import health, health_pb2

LIVENESS = "liveness"
READINESS = "readiness"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ClosingHealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """The library's servicer whose ``Watch`` streams end (status OK) once the server
    shuts down, after their last status, NOT_SERVING.

    Left open, a watch is force-cancelled when the server stops, which grpc-aio logs
    as an unhandled ``CancelledError`` with a stack trace, once per watcher.
    """

    def __init__(self) -> None:
        super().__init__()
        self._closed = asyncio.Event()

    def close_watches(self) -> None:
        """End every open and future ``Watch`` stream with a final NOT_SERVING."""
        self._closed.set()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        writes = _WriteTracker(context)
        watch = asyncio.ensure_future(super().Watch(request, writes))
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({watch, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            try:
                # Cancel only between writes: a write cut short leaves its batch open.
                while not watch.done() and not writes.idle.is_set():
                    await writes.idle.wait()
            finally:
                watch.cancel()
            await asyncio.wait({watch})
        if not watch.cancelled():
            watch.result()  # the watch ended on its own: re-raise what ended it
            return
        if writes.last_status != NOT_SERVING:
            await context.write(health_pb2.HealthCheckResponse(status=NOT_SERVING))


class _WriteTracker:
    """A servicer context that records the last status written and whether a write
    is in progress; everything else goes to the real context."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.idle = asyncio.Event()
        self.idle.set()
        self.last_status: int | None = None

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        self.idle.clear()
        try:
            await self._context.write(message)
            self.last_status = message.status
        finally:
            self.idle.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class HealthReporter:
    """Owns the health servicer's statuses for one server."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self.servicer = ClosingHealthServicer()
        self.service_names = tuple(service_names)
        self._ready = False
        self._down: set[str] = set()  # parts of the process that cannot make progress
        self._shutting_down = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def live(self) -> bool:
        """True while no part of the process has reported itself unable to progress."""
        return not self._down

    @property
    def down(self) -> tuple[str, ...]:
        """The parts whose failure holds liveness NOT_SERVING, sorted."""
        return tuple(sorted(self._down))

    def part_live(self, part: str) -> bool:
        return part not in self._down

    async def publish(self) -> None:
        """Push the current statuses to the servicer (watchers are notified)."""
        if self._shutting_down:
            return
        ready = SERVING if self._ready else NOT_SERVING
        await self.servicer.set(LIVENESS, SERVING if self.live else NOT_SERVING)
        await self.servicer.set(READINESS, ready)
        await self.servicer.set("", ready)
        for name in self.service_names:
            await self.servicer.set(name, ready)

    async def set_ready(self, ready: bool) -> None:
        """Readiness (and ``""`` and the service names) SERVING or NOT_SERVING."""
        self._ready = ready
        await self.publish()

    async def set_live(self, live: bool, *, part: str = "process") -> None:
        """Report whether ``part`` can make progress.

        Liveness is SERVING only while every part is live, so a background loop
        that gave up and a stalled engine each hold it down on their own.
        """
        if live:
            self._down.discard(part)
        else:
            self._down.add(part)
        await self.publish()

    async def shutdown(self) -> None:
        """Everything NOT_SERVING, for good."""
        self._ready = False
        await self.publish()
        self._shutting_down = True
        await self.servicer.enter_graceful_shutdown()

    def close_watches(self) -> None:
        """End the open ``Watch`` streams (after :meth:`shutdown`), so that stopping the
        server does not have to cancel them."""
        self.servicer.close_watches()
