"""``llmesh.v1.RegistryService`` over a :class:`RegistryBackend` (transport only)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2

from llmesh.kernel.durations import duration
from llmesh.kernel.streams import until_closing
from llmesh.kernel.telemetry import meter
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_registry.backend import RegistryBackend
from llmesh_registry.model import (
    STARTING,
    UNSPECIFIED,
    Event,
    HeartbeatUpdate,
    Keepalive,
    Snapshot,
    Update,
    WorkerFilter,
)

SERVICE_NAME = "llmesh.v1.RegistryService"  # also in app.py (kept import-light)


def _millis(ms: int) -> duration_pb2.Duration:
    return duration(ms / 1000)


def to_response(update: Update) -> registry_pb2.WatchWorkersResponse:
    """One ``WatchWorkersResponse`` for a snapshot, an event or a keepalive."""
    if isinstance(update, Snapshot):
        return registry_pb2.WatchWorkersResponse(
            revision=update.revision,
            snapshot=registry_pb2.WorkerSnapshot(workers=update.workers, warming=update.warming),
        )
    if isinstance(update, Keepalive):
        return registry_pb2.WatchWorkersResponse(
            revision=update.revision,
            keepalive=registry_pb2.WatchKeepalive(interval=duration(update.interval_s)),
        )
    event: Event = update
    return registry_pb2.WatchWorkersResponse(
        revision=event.revision,
        event=registry_pb2.WorkerEvent(type=event.type, worker=event.worker),  # type: ignore[arg-type]
    )


def stored_worker(worker: common_pb2.WorkerInfo) -> common_pb2.WorkerInfo:
    """The record to store: server timestamps dropped, an unset state as STARTING."""
    clean = common_pb2.WorkerInfo()
    clean.CopyFrom(worker)
    for name in ("registered_at", "last_heartbeat_at", "lease_expires_at"):
        clean.ClearField(name)  # type: ignore[arg-type]
    if clean.state == UNSPECIFIED:
        clean.state = STARTING
    return clean


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Calls the backend and shapes responses (the kernel checks the contract's limits)."""

    def __init__(
        self,
        backend: RegistryBackend,
        *,
        keepalive_s: float = 0.0,
        closing: asyncio.Event | None = None,
    ) -> None:
        self._backend = backend
        self._keepalive_s = keepalive_s
        # Set when the server stops: watches then end (OK) and watchers reconnect.
        self._closing = closing or asyncio.Event()
        m = meter("llmesh.registry")
        self._heartbeats = m.create_counter(
            "llmesh_registry_heartbeats", description="Heartbeats received"
        )
        self._registrations = m.create_counter(
            "llmesh_registry_registrations", description="Register calls accepted"
        )

    async def Register(
        self, request: registry_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RegisterResponse:
        worker = stored_worker(request.worker)
        lease = await self._backend.register(worker, uuid.uuid4().hex)
        self._registrations.add(1)
        return registry_pb2.RegisterResponse(
            lease_id=lease.lease_id, ttl=_millis(lease.ttl_ms), revision=lease.revision
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.HeartbeatResponse:
        result = await self._backend.heartbeat(
            HeartbeatUpdate(
                worker_id=request.worker_id,
                lease_id=request.lease_id,
                load=request.load if request.HasField("load") else None,
                state=request.state,
                state_reason=request.state_reason,
                models_loaded=tuple(request.models_loaded),
            )
        )
        self._heartbeats.add(1)
        return registry_pb2.HeartbeatResponse(
            ttl=_millis(result.ttl_ms),
            revision=result.revision,
            state=result.state,  # type: ignore[arg-type]
        )

    async def Deregister(
        self, request: registry_pb2.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeregisterResponse:
        revision = await self._backend.deregister(request.worker_id, request.lease_id)
        return registry_pb2.DeregisterResponse(revision=revision)

    async def ListWorkers(
        self,
        request: registry_pb2.RegistryServiceListWorkersRequest,
        context: grpc.aio.ServicerContext,
    ) -> registry_pb2.RegistryServiceListWorkersResponse:
        snap = await self._backend.snapshot()
        wanted = WorkerFilter(
            model=request.model, state=request.state, labels=dict(request.labels.entries)
        )
        return registry_pb2.RegistryServiceListWorkersResponse(
            workers=[w for w in snap.workers if wanted.matches(w)], revision=snap.revision
        )

    async def WatchWorkers(
        self, request: registry_pb2.WatchWorkersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.WatchWorkersResponse]:
        since = max(0, request.since_revision)
        updates = self._backend.watch(since, keepalive_s=self._keepalive_s)
        async for update in until_closing(self._closing, updates):
            yield to_response(update)

    async def SetWorkerState(
        self, request: registry_pb2.SetWorkerStateRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.SetWorkerStateResponse:
        worker, revision = await self._backend.set_state(
            request.worker_id, request.state, request.reason
        )
        return registry_pb2.SetWorkerStateResponse(worker=worker, revision=revision)
