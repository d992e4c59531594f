"""In-memory registry backend: one registry replica, state in this process."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llmesh.kernel.errors import FailedPrecondition, NotFound
from llmesh.kernel.logging import get_logger
from llmesh.v1 import common_pb2
from llmesh_registry.backend import RegistryBackend
from llmesh_registry.model import (
    LEASE_EXPIRED_REASON,
    READY,
    REMOVED,
    UNHEALTHY,
    UNSPECIFIED,
    UPSERTED,
    Event,
    HeartbeatResult,
    HeartbeatUpdate,
    Lease,
    LeasePolicy,
    Snapshot,
)
from llmesh_registry.records import copy_worker, timestamp_ms
from llmesh_registry.watch import WatchHub

log = get_logger(__name__)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Entry:
    worker: common_pb2.WorkerInfo
    lease_id: str
    expires_ms: int
    pinned_state: int = UNSPECIFIED  # set by an admin; wins over heartbeats


class MemoryBackend(RegistryBackend):
    """Workers in a dict, history in a bounded deque; single event loop, no locks.

    The state dies with the process. A restarted registry therefore starts empty and
    *warming* for ``warmup_ms`` (from :meth:`start`): its snapshots say so, and
    watchers keep the workers they knew until the registrars have registered again;
    when warm-up ends every watcher gets a complete snapshot.
    """

    def __init__(
        self,
        policy: LeasePolicy,
        *,
        hub: WatchHub | None = None,
        history: int = 10_000,
        clock_ms: Callable[[], int] = _wall_ms,
        warmup_ms: int = 0,
    ) -> None:
        super().__init__(policy, hub)
        self._clock_ms = clock_ms
        self._workers: dict[str, _Entry] = {}
        self._history: deque[Event] = deque(maxlen=history)
        # Start from a time-based revision so that a restarted registry never
        # reuses revisions a watcher saw from its previous life.
        self._revision = time.time_ns() // 1000
        self._warmup_ms = warmup_ms
        self._warming = False
        self._warm_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        if self._warmup_ms > 0:
            self._warming = True
            loop = asyncio.get_running_loop()
            self._warm_timer = loop.call_later(self._warmup_ms / 1000, self._warmed)

    async def close(self) -> None:
        if self._warm_timer is not None:
            self._warm_timer.cancel()
            self._warm_timer = None

    def _warmed(self) -> None:
        self._warming = False
        self._warm_timer = None
        log.info("registry warmed up: %d workers registered", len(self._workers))
        self.hub.resync()  # every watcher: a complete snapshot now

    async def ping(self) -> bool:
        return True

    def _emit(self, event_type: int, worker: common_pb2.WorkerInfo) -> int:
        self._revision += 1
        event = Event(revision=self._revision, type=event_type, worker=copy_worker(worker))
        self._history.append(event)
        self.hub.publish(event)
        return self._revision

    def _get(self, worker_id: str) -> _Entry:
        entry = self._workers.get(worker_id)
        if entry is None:
            raise NotFound(f"worker {worker_id!r} is not registered", reason="WORKER_NOT_FOUND")
        return entry

    async def register(self, worker: common_pb2.WorkerInfo, lease_id: str) -> Lease:
        now = self._clock_ms()
        record = copy_worker(worker)
        previous = self._workers.get(worker.worker_id)
        if previous is not None:
            record.registered_at.CopyFrom(previous.worker.registered_at)
        else:
            record.registered_at.CopyFrom(timestamp_ms(now))
        pinned = previous.pinned_state if previous is not None else UNSPECIFIED
        if previous is not None and pinned != UNSPECIFIED:
            # An admin's drain outlives a re-registration (e.g. a restarted registrar).
            record.state = pinned  # type: ignore[assignment]
            record.state_reason = previous.worker.state_reason
        expires = now + self.policy.ttl_ms
        record.last_heartbeat_at.CopyFrom(timestamp_ms(now))
        record.lease_expires_at.CopyFrom(timestamp_ms(expires))
        self._workers[worker.worker_id] = _Entry(record, lease_id, expires, pinned)
        revision = self._emit(UPSERTED, record)
        return Lease(lease_id=lease_id, ttl_ms=self.policy.ttl_ms, revision=revision)

    async def heartbeat(self, update: HeartbeatUpdate) -> HeartbeatResult:
        entry = self._get(update.worker_id)
        if entry.lease_id != update.lease_id:
            raise FailedPrecondition(
                f"lease {update.lease_id!r} is not the current lease of {update.worker_id!r}",
                reason="STALE_LEASE",
            )
        now = self._clock_ms()
        worker = entry.worker
        before = worker.SerializeToString(deterministic=True)
        if update.load is not None:
            worker.load.CopyFrom(update.load)
        if entry.pinned_state != UNSPECIFIED:
            if worker.state != entry.pinned_state:
                worker.state = entry.pinned_state  # type: ignore[assignment]
        elif update.state != UNSPECIFIED:
            worker.state = update.state  # type: ignore[assignment]
            worker.state_reason = update.state_reason
        if update.models_loaded:
            del worker.models_loaded[:]
            worker.models_loaded.extend(update.models_loaded)
        changed = worker.SerializeToString(deterministic=True) != before
        entry.expires_ms = now + self.policy.ttl_ms
        worker.last_heartbeat_at.CopyFrom(timestamp_ms(now))
        worker.lease_expires_at.CopyFrom(timestamp_ms(entry.expires_ms))
        revision = self._emit(UPSERTED, worker) if changed else self._revision
        return HeartbeatResult(ttl_ms=self.policy.ttl_ms, revision=revision, state=worker.state)

    async def deregister(self, worker_id: str, lease_id: str) -> int:
        entry = self._get(worker_id)
        if lease_id and entry.lease_id != lease_id:
            raise FailedPrecondition(
                f"lease {lease_id!r} is not the current lease of {worker_id!r}",
                reason="STALE_LEASE",
            )
        del self._workers[worker_id]
        return self._emit(REMOVED, entry.worker)

    async def set_state(
        self, worker_id: str, state: int, reason: str
    ) -> tuple[common_pb2.WorkerInfo, int]:
        entry = self._get(worker_id)
        entry.pinned_state = UNSPECIFIED if state == READY else state
        worker = entry.worker
        revision = self._revision
        if worker.state != state or worker.state_reason != reason:
            worker.state = state  # type: ignore[assignment]
            worker.state_reason = reason
            revision = self._emit(UPSERTED, worker)
        return copy_worker(worker), revision

    async def snapshot(self) -> Snapshot:
        workers = [copy_worker(self._workers[k].worker) for k in sorted(self._workers)]
        return Snapshot(revision=self._revision, workers=workers, warming=self._warming)

    async def replay(self, since_revision: int) -> list[Event] | None:
        if since_revision == self._revision:
            return []
        if since_revision > self._revision or not self._history:
            return None
        first = self._history[0].revision
        if since_revision + 1 < first:
            return None
        return [e for e in self._history if e.revision > since_revision]

    async def sweep(self) -> int:
        now = self._clock_ms()
        changes = 0
        for worker_id, entry in list(self._workers.items()):
            if now < entry.expires_ms:
                continue
            if now >= entry.expires_ms + self.policy.evict_after_ms:
                del self._workers[worker_id]
                self._emit(REMOVED, entry.worker)
                changes += 1
            elif entry.worker.state != UNHEALTHY:
                entry.worker.state = UNHEALTHY
                entry.worker.state_reason = LEASE_EXPIRED_REASON
                self._emit(UPSERTED, entry.worker)
                changes += 1
        return changes
