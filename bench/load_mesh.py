"""The mesh that ``bench.load`` and ``bench.soak`` drive, or the one they are pointed at.

:func:`started_mesh` runs the plan of ``llmesh up`` (registry, N inference workers each
with its registrar, memory, gateway) on free loopback ports with the deterministic tiny
model, every child with a metrics port, and user keys for a few tenants. The gateway's
per-principal limits are raised far above what the load asks, so a run measures the
mesh's own admission (queues, deadlines), not a tenant's quota.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

MODEL = "tiny-llama-test"

# Limits far above the load (0 would disable them; they stay on, out of the way).
HIGH_LIMITS = {
    "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "60000000",
    "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "60000000",
    "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "6000000000",
    "LLMESH_GATEWAY_RATE_LIMIT__CONCURRENT_STREAMS": "100000",
}


@dataclass
class Target:
    """Where the load goes: the gateway's address and the keys to call it with."""

    address: str
    keys: list[str]
    # Set when this process started the mesh: child name -> pid / metrics port.
    pids: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    workers: int = 0


def _ready_workers(registry: str) -> int:
    from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc

    with grpc.insecure_channel(registry) as channel:
        try:
            reply = registry_pb2_grpc.RegistryServiceStub(channel).ListWorkers(
                registry_pb2.RegistryServiceListWorkersRequest(), timeout=5
            )
        except grpc.RpcError:
            return 0
    return sum(1 for w in reply.workers if w.state == common_pb2.WORKER_STATE_READY)


@contextmanager
def started_mesh(
    home: Path,
    *,
    workers: int = 2,
    tenants: int = 4,
    log_level: str = "WARNING",
    start_timeout_s: float = 600.0,
    worker_args: Sequence[str] = (),
) -> Iterator[Target]:
    """Start the mesh in ``home`` (the tiny model is written there); stop it on exit.

    ``worker_args`` are extra flags of every inference worker (e.g. ``--blas-threads 1``).
    """
    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan, child_names, worker_name
    from llmesh_inference.tiny import init_tiny

    models = home / "models"
    if not (models / MODEL).exists():
        init_tiny(models / MODEL, size="test")
    services = ("registry", "inference", "registrar", "memory", "gateway")
    options = mesh_options(
        home,
        models_dir=models,
        default_model=MODEL,
        services=services,
        workers=workers,
        metrics=child_names(services, workers),
        log_level=log_level,
        args={worker_name(i): list(worker_args) for i in range(workers)},
        env={"gateway": HIGH_LIMITS},
    )
    with LocalMesh(build_plan(options), home=home) as mesh:
        mesh.start()
        deadline = time.monotonic() + start_timeout_s
        while _ready_workers(mesh.address("registry")) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} workers not READY after {start_timeout_s:.0f}s")
            time.sleep(0.5)
        keys = [mesh.create_key(role="user", tenant=f"load-{i}") for i in range(tenants)]
        yield Target(
            address=mesh.address("gateway"),
            keys=keys,
            pids={name: mesh.pid(name) for name in mesh.specs},
            metrics_ports=dict(options.metrics_ports or {}),
            logs={name: mesh.log(name) for name in mesh.specs},
            workers=workers,
        )
