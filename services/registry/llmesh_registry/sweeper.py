"""Background tasks of a registry replica: lease sweeping and readiness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh_registry.backend import RegistryBackend

log = get_logger(__name__)


class LeaseSweeper:
    """Marks lapsed leases UNHEALTHY and evicts long-lapsed workers, every ``interval_s``.

    A lease lapses when its registrar's heartbeats stop *arriving*; while this process
    is frozen (SIGSTOP, a VM pause, a starved event loop) none arrive, through no fault
    of the workers. So the sweeper watches its own pace: a gap between two rounds longer
    than ``stall_after_s`` means the registry itself stalled, and it then marks and
    evicts nothing for ``grace_s`` (one lease TTL), time for every live registrar to
    heartbeat again. Workers that stay silent through the grace lapse as usual.
    """

    def __init__(
        self,
        backend: RegistryBackend,
        *,
        interval_s: float,
        grace_s: float = 0.0,
        stall_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self.interval_s = interval_s
        self.grace_s = grace_s
        if stall_after_s is None:
            # Five rounds, at least a second (scheduling noise), and at most half the
            # grace (a lease TTL): a shorter stall cannot cost a registrar its lease,
            # whose heartbeats come every third of the TTL.
            stall_after_s = max(1.0, 5 * interval_s)
            if grace_s > 0:
                stall_after_s = min(stall_after_s, grace_s / 2)
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._last: float | None = None
        self.hold_until = 0.0
        self.stalls = 0

    async def tick(self) -> int:
        """One round; returns the changes made (0 while holding after a stall)."""
        now = self._clock()
        if self._last is not None and self.grace_s > 0:
            gap = now - self._last
            if gap > self.stall_after_s:
                self.stalls += 1
                self.hold_until = now + self.grace_s
                log.warning(
                    "registry stalled for %.1f s (frozen or starved): no lease lapses "
                    "for %.1f s while registrars heartbeat again",
                    gap,
                    self.grace_s,
                )
        self._last = now
        if now < self.hold_until:
            return 0
        return await self._backend.sweep()

    async def run(self) -> None:
        """Sweep forever (cancel to stop); a failed round is logged and retried."""
        self._last = None  # a restart after a crash is not a stall
        while True:
            try:
                await self.tick()
            except LlmeshError as exc:
                log.warning("lease sweep failed: %s", exc)
            await asyncio.sleep(self.interval_s)


async def sweep_forever(
    backend: RegistryBackend, *, interval_s: float, grace_s: float = 0.0
) -> None:
    """A :class:`LeaseSweeper` run forever (``grace_s``: hold after a stall; 0: none)."""
    await LeaseSweeper(backend, interval_s=interval_s, grace_s=grace_s).run()


async def watch_readiness(
    backend: RegistryBackend,
    set_ready: Callable[[bool], Awaitable[None]],
    *,
    interval_s: float,
) -> None:
    """Readiness follows whether the backend answers."""
    ready: bool | None = None
    while True:
        ok = await backend.ping()
        if ok != ready:
            ready = ok
            if not ok:
                log.warning("registry store unreachable: readiness NOT_SERVING")
            await set_ready(ok)
        await asyncio.sleep(interval_s)
