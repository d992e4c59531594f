"""The storage interface every registry backend implements (one contract suite)."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from llmesh.v1 import common_pb2
from llmesh_registry.model import (
    Event,
    HeartbeatResult,
    HeartbeatUpdate,
    Lease,
    LeasePolicy,
    Snapshot,
    Update,
)
from llmesh_registry.watch import WatchHub, watch_updates


class RegistryBackend(abc.ABC):
    """Workers, leases and a dense revision counter with replayable history.

    Errors: ``NotFound`` (unknown or evicted worker), ``FailedPrecondition``
    (stale lease), ``Unavailable`` (storage down).
    """

    def __init__(self, policy: LeasePolicy, hub: WatchHub | None = None) -> None:
        self.policy = policy
        self.hub = hub or WatchHub()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and start background readers."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and stop background readers."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the storage answers (drives health readiness)."""

    @abc.abstractmethod
    async def register(self, worker: common_pb2.WorkerInfo, lease_id: str) -> Lease:
        """Insert or replace ``worker`` with a fresh lease ``lease_id``."""

    @abc.abstractmethod
    async def heartbeat(self, update: HeartbeatUpdate) -> HeartbeatResult:
        """Renew the lease and store the figures; emits an event only on change."""

    @abc.abstractmethod
    async def deregister(self, worker_id: str, lease_id: str) -> int:
        """Remove the worker; returns the revision after the change."""

    @abc.abstractmethod
    async def set_state(
        self, worker_id: str, state: int, reason: str
    ) -> tuple[common_pb2.WorkerInfo, int]:
        """Set a worker's state by hand; non-READY states stick over heartbeats and
        over a re-registration of the same worker id (until READY is set by hand or the
        worker is removed)."""

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """Every worker (ordered by id) at one revision."""

    @abc.abstractmethod
    async def replay(self, since_revision: int) -> list[Event] | None:
        """Events after ``since_revision``, or None when they are no longer held."""

    @abc.abstractmethod
    async def sweep(self) -> int:
        """Mark lapsed leases UNHEALTHY and evict long-lapsed ones; returns changes."""

    def watch(self, since_revision: int = 0, *, keepalive_s: float = 0.0) -> AsyncIterator[Update]:
        """Snapshot (or missed events), then every change, each with its revision;
        a keepalive after each ``keepalive_s`` without one (0: none)."""
        return watch_updates(
            self.hub,
            since_revision=since_revision,
            snapshot=self.snapshot,
            replay=self.replay,
            keepalive_s=keepalive_s,
        )
