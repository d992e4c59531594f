"""A local cache of the registry, fed by ``RegistryService.WatchWorkers``.

Whoever finds workers through the registry (the gateway routing generations, memory
choosing embedders) reads this cache only. When the registry stream breaks the last
snapshot is kept (work goes on) and the watcher reconnects with backoff, resuming
from the last revision. A restarted registry that says it is *warming* does not blank
the cache (see :class:`RegistryCache`). ``staleness_s`` is 0 while the stream is live,
else the time since it broke or since a hung registry last spoke (its keepalives
stopped); it is exported as a metric. The watch loop runs under the kernel
Supervisor: a crash (e.g. in the change callback) is logged, the loop restarts with
backoff, staleness counts from the crash, and liveness fails if it keeps crashing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from opentelemetry.metrics import CallbackOptions, Observation

from llmesh.kernel.logging import get_logger
from llmesh.kernel.tasks import SupervisedTask, Supervisor
from llmesh.kernel.telemetry import meter
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc

log = get_logger(__name__)

ChangeCallback = Callable[["RegistryCache"], Awaitable[None]]


class RegistryCache:
    """Workers by id as of the registry's latest revision seen.

    Two guards keep routing going through registry faults:

    - A snapshot marked ``warming`` (a registry that restarted without its state and
      waits for the registrars to register again) does not drop the workers it lacks:
      they stay *held* until an event changes them or a complete snapshot arrives.
    - A registry that sends keepalives (every ``interval``) and then falls silent is
      hung: ``staleness_s`` grows from its last message, though the stream is open.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.workers: dict[str, common_pb2.WorkerInfo] = {}
        self.revision = 0
        self.has_snapshot = False
        self.connected = False
        self.warming = False
        self.held: set[str] = set()  # kept from before a warming snapshot
        self._last_live = clock()
        self._last_message = self._last_live
        self._keepalive_s = 0.0  # interval announced on this stream (0: none seen)

    def apply(self, message: registry_pb2.WatchWorkersResponse) -> None:
        """Apply one WatchWorkers message (snapshot, event or keepalive)."""
        if message.HasField("snapshot"):
            self._apply_snapshot(message.snapshot)
        elif message.HasField("event"):
            event = message.event
            self.held.discard(event.worker.worker_id)
            if event.type == registry_pb2.WORKER_EVENT_TYPE_REMOVED:
                self.workers.pop(event.worker.worker_id, None)
            else:
                self.workers[event.worker.worker_id] = event.worker
        elif message.HasField("keepalive"):
            self._keepalive_s = message.keepalive.interval.ToNanoseconds() / 1e9
        if message.revision:
            # A snapshot may come from a restarted registry with lower revisions: take it.
            self.revision = message.revision
        self._last_live = self._last_message = self._clock()

    def _apply_snapshot(self, snapshot: registry_pb2.WorkerSnapshot) -> None:
        fresh = {w.worker_id: w for w in snapshot.workers}
        if snapshot.warming:
            kept = {k: w for k, w in self.workers.items() if k not in fresh}
            if kept and not self.warming:
                log.warning(
                    "the registry restarted and is warming up: routing on with %d workers "
                    "it does not list yet (%s)",
                    len(kept),
                    ", ".join(sorted(kept)),
                )
            self.held = set(kept)
            fresh = {**kept, **fresh}
        elif self.held:
            gone = sorted(k for k in self.held if k not in fresh)
            if gone:
                log.warning("registry warmed up; dropping workers not seen again: %s", gone)
            self.held = set()
        self.warming = snapshot.warming
        self.workers = fresh
        self.has_snapshot = True

    def mark(self, *, connected: bool) -> None:
        now = self._clock()
        if not connected and self.connected and self.silent_s > 0:
            # The stream was already silent (a hung registry): stale since its last word.
            self._last_live = self._last_message
        else:
            self._last_live = now
        self.connected = connected
        self._keepalive_s = 0.0  # each stream announces its own interval

    @property
    def resume_revision(self) -> int:
        """Where a new watch resumes: 0 (a fresh snapshot) while warming, since a
        watcher that missed the end of the warm-up would keep held workers for good."""
        return 0 if self.warming else self.revision

    @property
    def silent_s(self) -> float:
        """Seconds since the registry's last message when that exceeds three keepalive
        intervals (it announced keepalives, then went quiet: hung); else 0."""
        if not self._keepalive_s:
            return 0.0
        silence = self._clock() - self._last_message
        return silence if silence > max(3 * self._keepalive_s, 0.5) else 0.0

    @property
    def staleness_s(self) -> float:
        """0 while the watch is live; else seconds since it last was (broken or hung)."""
        if self.connected:
            return self.silent_s
        return max(0.0, self._clock() - self._last_live)

    def routable(self) -> bool:
        """Whether some READY worker exists in the snapshot."""
        return any(w.state == common_pb2.WORKER_STATE_READY for w in self.workers.values())

    def get(self, worker_id: str) -> common_pb2.WorkerInfo | None:
        return self.workers.get(worker_id)

    def list(self) -> list[common_pb2.WorkerInfo]:
        return [self.workers[k] for k in sorted(self.workers)]


class RegistryWatcher:
    """Background task keeping a ``RegistryCache`` in sync with the registry."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        cache: RegistryCache,
        *,
        on_change: ChangeCallback | None = None,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        metric_prefix: str = "",
    ) -> None:
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self.cache = cache
        self._on_change = on_change
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._task: SupervisedTask | None = None
        self.first_snapshot = asyncio.Event()
        if metric_prefix:  # e.g. "gateway": gateway.registry.staleness_seconds
            m = meter(f"llmesh.{metric_prefix}")
            m.create_observable_gauge(
                f"{metric_prefix}.registry.staleness_seconds",
                callbacks=[self._observe_staleness],
                description="Seconds since the registry cache was live (0 while watching)",
            )
            m.create_observable_gauge(
                f"{metric_prefix}.workers",
                callbacks=[self._observe_workers],
                description="Workers in the registry cache, by state",
            )

    def _observe_staleness(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self.cache.staleness_s)]

    def _observe_workers(self, _options: CallbackOptions) -> list[Observation]:
        counts: dict[str, int] = {}
        for worker in self.cache.workers.values():
            name = common_pb2.WorkerState.Name(worker.state)
            counts[name] = counts.get(name, 0) + 1
        return [Observation(n, {"state": s}) for s, n in counts.items()]

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Run the watch under ``supervisor`` (the service's, so it can fail liveness)."""
        self._task = (supervisor or Supervisor()).spawn("registry-watch", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            await self._task.stop()

    async def _changed(self) -> None:
        if self._on_change is not None:
            await self._on_change(self.cache)

    async def _run(self) -> None:
        try:
            await self._watch()
        finally:
            # However the loop ends (a crash, a cancel), the cache is no longer live:
            # staleness must grow from now on, not read 0 for ever.
            if self.cache.connected:
                self.cache.mark(connected=False)

    async def _watch(self) -> None:
        backoff = self._min_backoff_s
        while True:
            call = self._stub.WatchWorkers(
                registry_pb2.WatchWorkersRequest(since_revision=self.cache.resume_revision),
                wait_for_ready=False,
            )
            try:
                async for message in call:
                    if not self.cache.connected:
                        self.cache.mark(connected=True)
                    silent = self.cache.silent_s
                    if silent:
                        log.warning("the registry answers again after %.1f s of silence", silent)
                    self.cache.apply(message)
                    backoff = self._min_backoff_s
                    if message.HasField("keepalive"):
                        continue
                    if message.HasField("snapshot"):
                        self.first_snapshot.set()
                    await self._changed()
            except grpc.aio.AioRpcError as exc:
                if self.cache.connected:
                    log.warning(
                        "registry watch broke (%s); working from the last snapshot",
                        exc.code().name,
                    )
            finally:
                call.cancel()
            if self.cache.connected:
                self.cache.mark(connected=False)
                await self._changed()
            await asyncio.sleep(backoff)
            backoff = min(self._max_backoff_s, backoff * 2)
