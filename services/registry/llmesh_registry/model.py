"""Registry domain types shared by every backend and the gRPC servicer.

Workers are stored as ``llmesh.v1.WorkerInfo`` messages (the contract type);
the dataclasses here carry what the backends return besides them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmesh.v1 import common_pb2, registry_pb2

WorkerState = common_pb2.WorkerState
STARTING = common_pb2.WORKER_STATE_STARTING
READY = common_pb2.WORKER_STATE_READY
DRAINING = common_pb2.WORKER_STATE_DRAINING
UNHEALTHY = common_pb2.WORKER_STATE_UNHEALTHY
UNSPECIFIED = common_pb2.WORKER_STATE_UNSPECIFIED

UPSERTED = registry_pb2.WORKER_EVENT_TYPE_UPSERTED
REMOVED = registry_pb2.WORKER_EVENT_TYPE_REMOVED

LEASE_EXPIRED_REASON = "lease expired"


@dataclass(frozen=True)
class LeasePolicy:
    """How long a lease lives, and how long after it lapses the worker is evicted."""

    ttl_ms: int = 10_000
    evict_after_ms: int = 20_000

    def __post_init__(self) -> None:
        if self.ttl_ms <= 0 or self.evict_after_ms < 0:
            raise ValueError("ttl_ms must be > 0 and evict_after_ms >= 0")


@dataclass(frozen=True)
class Lease:
    """What ``register`` returns."""

    lease_id: str
    ttl_ms: int
    revision: int


@dataclass(frozen=True)
class HeartbeatUpdate:
    """One heartbeat: the lease to renew and the figures to store."""

    worker_id: str
    lease_id: str
    load: common_pb2.WorkerLoad | None = None
    state: int = UNSPECIFIED
    state_reason: str = ""
    models_loaded: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeartbeatResult:
    """What ``heartbeat`` returns: the new lease length, revision and held state."""

    ttl_ms: int
    revision: int
    state: int


@dataclass(frozen=True)
class Snapshot:
    """Every worker at one revision (``warming``: the view may still miss workers)."""

    revision: int
    workers: list[common_pb2.WorkerInfo] = field(default_factory=list)
    warming: bool = False


@dataclass(frozen=True)
class Event:
    """One change to one worker (``UPSERTED`` or ``REMOVED``)."""

    revision: int
    type: int
    worker: common_pb2.WorkerInfo


@dataclass(frozen=True)
class Keepalive:
    """Nothing changed for ``interval_s``: sent on a quiet watch so hangs show."""

    revision: int
    interval_s: float


Update = Snapshot | Event | Keepalive


@dataclass(frozen=True)
class WorkerFilter:
    """``ListWorkers`` filters; empty fields match everything."""

    model: str = ""
    state: int = UNSPECIFIED
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, worker: common_pb2.WorkerInfo) -> bool:
        if self.model and (
            self.model not in worker.models_loaded and self.model not in worker.models_available
        ):
            return False
        if self.state not in (UNSPECIFIED, worker.state):
            return False
        return all(worker.labels.entries.get(k) == v for k, v in self.labels.items())
