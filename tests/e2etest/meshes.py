"""What the e2e meshes share: the plan of `llmesh up` started by the supervisor's
:class:`LocalMesh` (each service its own process) exporting spans over OTLP to a
:class:`Collector` in the test process, workers registered by the test, API keys.

:func:`start_paced_mesh` is the one-worker mesh of the client-facing suites (chat
streams, the public clients); :mod:`e2etest.gateway_mesh` (two workers, failover) and
:mod:`e2etest.openai_mesh` (`llmesh up`'s whole plan, the HTTP door) build on the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import grpc

from llmesh.testing.rpc import Collector
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, registry_pb2, registry_pb2_grpc
from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
from llmesh_cli.supervisor.plan import build_plan

MODEL = "tiny-llama-test"
# A lease that outlives any test: the test stands in for the registrar, so a killed or
# stopped worker stays READY in the registry (what failover and breakers exist for).
LONG_LEASE = ["--lease-ttl-ms", "600000", "--evict-after-ms", "600000"]
# A pause after each decode step: the tiny model decodes ~1000 tokens/s unpaced, so
# without it a deadline test's stream may end before its deadline on an idle machine.
PACED_WORKER = {"LLMESH_INFERENCE_DECODE_DELAY_MS": "5"}
# Generation limits no test reaches unless it sets its own.
AMPLE_GENERATIONS = {
    "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "6000",
    "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "10000000",
}


def otlp_env(otlp: str, services: Iterable[str]) -> dict[str, str]:
    """The env that makes each of ``services`` export its spans to ``otlp`` at once."""
    env = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
    env.update({f"LLMESH_{kind.upper()}_OTLP_ENDPOINT": otlp for kind in services})
    return env


def register_worker(registry: str, worker_id: str, address: str) -> None:
    """Register a READY worker serving :data:`MODEL` (the registrar's job, done once)."""
    with grpc.insecure_channel(registry) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id=worker_id,
                    address=address,
                    models_loaded=[MODEL],
                    models_available=[MODEL],
                    capacity=8,
                    state=common_pb2.WORKER_STATE_READY,
                )
            ),
            timeout=5,
        )


def create_user_keys(gateway: str, admin_key: str, users: Mapping[str, str]) -> dict[str, str]:
    """A user key per ``name -> tenant``, made over the gateway's AdminService."""
    with grpc.insecure_channel(gateway) as channel:
        admin = gateway_pb2_grpc.AdminServiceStub(channel)
        return {
            name: admin.CreateApiKey(
                gateway_pb2.CreateApiKeyRequest(
                    name=name, role=gateway_pb2.ROLE_USER, tenant=tenant
                ),
                metadata=(("authorization", f"Bearer {admin_key}"),),
                timeout=10,
            ).api_key
            for name, tenant in users.items()
        }


@contextmanager
def start_paced_mesh(
    tmp: Path, models_dir: Path, *, gateway_env: Mapping[str, str]
) -> Iterator[tuple[LocalMesh, Collector]]:
    """Registry (long leases), one paced MLX worker ``w0`` on :data:`MODEL` registered
    by the test, memory on SQLite and the gateway (ample generation limits, then
    ``gateway_env``), all SERVING; stopped on exit."""
    collector = Collector()
    otlp = collector.start()
    try:
        options = mesh_options(
            tmp,
            models_dir=models_dir,
            default_model=MODEL,
            services=("registry", "inference", "memory", "gateway"),
            args={"registry": LONG_LEASE},
            env={"inference": PACED_WORKER, "gateway": {**AMPLE_GENERATIONS, **gateway_env}},
        )
        with LocalMesh(
            build_plan(options), home=tmp, env=otlp_env(otlp, options.services)
        ) as local:
            local.start(wait=False)
            local.wait_ready("inference")
            local.wait_ready("registry")
            register_worker(local.address("registry"), "w0", local.address("inference"))
            for name in ("memory", "gateway"):
                local.wait_ready(name)
            yield local, collector
    finally:
        collector.stop()
