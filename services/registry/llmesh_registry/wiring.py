"""Wiring of the registry package's two processes on a ``ServiceHost``.

``wire``: a registry replica (backend, sweeper, readiness, the servicer).
``wire_registrar``: the registrar sidecar beside an inference worker.
Every service package has a ``wiring.py`` with ``SERVICE_NAMES`` and ``wire(host, settings)``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

from llmesh.kernel.channels import create_channel
from llmesh.kernel.logging import get_logger
from llmesh.kernel.server import ServiceHost
from llmesh.kernel.tasks import Supervisor
from llmesh.v1 import registry_pb2_grpc
from llmesh_registry.backend import RegistryBackend
from llmesh_registry.memory_backend import MemoryBackend
from llmesh_registry.metrics import WorkerGauge
from llmesh_registry.model import LeasePolicy
from llmesh_registry.probe import WorkerProbe
from llmesh_registry.redis_backend import RedisBackend
from llmesh_registry.registrar import Registrar, WorkerIdentity
from llmesh_registry.servicer import RegistryServicer
from llmesh_registry.settings import RegistrarSettings, RegistrySettings
from llmesh_registry.sweeper import sweep_forever, watch_readiness
from llmesh_registry.watch import WatchHub

SERVICE_NAMES = ("llmesh.v1.RegistryService",)
REGISTRAR_SERVICE_NAMES: tuple[str, ...] = ()  # the sidecar serves only grpc.health.v1


def build_backend(
    settings: RegistrySettings, *, supervisor: Supervisor | None = None
) -> RegistryBackend:
    """The backend named by ``settings.backend`` (its background readers under ``supervisor``)."""
    policy = LeasePolicy(ttl_ms=settings.lease_ttl_ms, evict_after_ms=settings.evict_after_ms)
    hub = WatchHub(max_queue=settings.watch_queue)
    if settings.backend == "redis":
        return RedisBackend(
            policy,
            url=settings.redis_url,
            prefix=settings.redis_prefix,
            hub=hub,
            history=settings.history,
            op_timeout_s=settings.redis_timeout_s,
            supervisor=supervisor,
        )
    return MemoryBackend(
        policy, hub=hub, history=settings.history, warmup_ms=settings.effective_warmup_ms
    )


@contextlib.asynccontextmanager
async def wire(
    host: ServiceHost,
    settings: RegistrySettings,
    backend: RegistryBackend | None = None,
    *,
    supervisor: Supervisor | None = None,
) -> AsyncIterator[RegistryBackend]:
    """Start the backend and the supervised loops, add the servicer to ``host``."""
    supervisor = supervisor or Supervisor(health=host.health)
    backend = backend or build_backend(settings, supervisor=supervisor)
    await backend.start()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(
            backend, keepalive_s=settings.watch_keepalive_ms / 1000, closing=host.closing
        ),
        host.server,
    )
    supervisor.spawn(
        "registry-sweeper",
        lambda: sweep_forever(
            backend,
            interval_s=settings.effective_sweep_interval_s,
            grace_s=settings.effective_stall_grace_s,
        ),
    )
    supervisor.spawn(
        "registry-readiness",
        lambda: watch_readiness(
            backend, host.health.set_ready, interval_s=settings.readiness_interval_s
        ),
    )
    gauge = WorkerGauge()
    supervisor.spawn("registry-gauge", lambda: gauge.refresh_forever(backend, interval_s=5.0))
    try:
        yield backend
    finally:
        await supervisor.stop()
        await backend.close()


def default_worker_id(worker_address: str) -> str:
    """``<hostname>-<port>``: stable across restarts, unique per host and port."""
    port = worker_address.rpartition(":")[2]
    return f"{socket.gethostname()}-{port}"


@contextlib.asynccontextmanager
async def wire_registrar(host: ServiceHost, settings: RegistrarSettings) -> AsyncIterator[None]:
    """Run the registrar beside ``host``; on exit mark DRAINING and deregister."""
    log = get_logger("llmesh_registry.registrar")
    worker_channel = create_channel(settings.worker, tls=settings.client_tls)
    # A restarted registry must hear from this registrar at its next heartbeat, not
    # after gRPC's reconnect backoff (up to minutes): it is warming up meanwhile.
    registry_channel = create_channel(
        settings.registry, tls=settings.client_tls, max_reconnect_backoff_s=1.0
    )
    identity = WorkerIdentity(
        worker_id=settings.worker_id or default_worker_id(settings.worker),
        address=settings.advertise_address or settings.worker,
        labels=dict(settings.labels),
    )
    registrar = Registrar(
        identity,
        WorkerProbe(worker_channel, timeout_s=settings.probe_timeout_s),
        registry_pb2_grpc.RegistryServiceStub(registry_channel),
        registry_timeout_s=settings.registry_timeout_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
    )

    async def announce_ready() -> None:
        await registrar.registered.wait()
        await host.health.set_ready(True)

    supervisor = Supervisor(health=host.health)
    supervisor.spawn("registrar", registrar.run)
    supervisor.spawn("registrar-ready", announce_ready)
    try:
        yield
    finally:
        await supervisor.stop()
        log.info("shutting down: marking %s DRAINING", identity.worker_id)
        await registrar.drain(timeout_s=settings.drain_timeout_s)
        await worker_channel.close(None)
        await registry_channel.close(None)
