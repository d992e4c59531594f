"""Standard ``grpc.health.v1`` with the service names llmesh probes use.

Names: ``""`` and every full service name follow readiness; ``liveness`` says the
process can make progress; ``readiness`` says its dependencies answer (model
loaded, store reachable, routable snapshot ...). Shutdown flips all of them to
NOT_SERVING first.
"""

from __future__ import annotations

from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

LIVENESS = "liveness"
READINESS = "readiness"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Owns the health servicer's statuses for one server."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
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
