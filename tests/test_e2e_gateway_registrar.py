"""The gateway following a real registry fed by a real registrar sidecar: readiness comes
with the first READY worker, routing stops the moment the registrar reports the worker
gone, and comes back with it. Processes: registry, inference, registrar, gateway."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from llmesh.testing.polling import wait_until
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options, readiness
from llmesh_cli.supervisor.plan import build_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODEL = "tiny-llama-test"


@dataclass
class Running:
    gateway: str
    key: str
    mesh: LocalMesh


def _status(address: str, service: str = "readiness") -> int:
    return readiness(address, service=service)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("e2e-registrar")
    options = mesh_options(
        tmp,
        models_dir=tiny_model_dir,
        default_model=MODEL,
        services=("registry", "inference", "registrar", "gateway"),
        args={
            "registry": ["--lease-ttl-ms", "1500", "--evict-after-ms", "60000"],
            "inference": ["--data-dir", str(tmp / "worker")],
            "registrar": ["--worker-id", "w-real", "--probe-timeout-s", "0.5"],
        },
    )
    with LocalMesh(build_plan(options), home=tmp) as mesh:
        mesh.start("registry", "inference", "gateway", wait=False)
        state = Running(
            gateway=mesh.address("gateway"),
            key=mesh.create_key(role="user", tenant="t"),
            mesh=mesh,
        )
        # No worker is registered yet: the gateway is up but not ready.
        wait_until(lambda: _status(state.gateway, "liveness") == 1, timeout_s=60, what="live")
        assert _status(state.gateway) == health_pb2.HealthCheckResponse.NOT_SERVING
        mesh.spawn("registrar")
        yield state


def _generate(running: Running) -> Any:
    with grpc.insecure_channel(running.gateway) as channel:
        return gateway_pb2_grpc.GatewayServiceStub(channel).Generate(
            gateway_pb2.GenerateRequest(
                input=common_pb2.GenerationInput(
                    prompt="hi", sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0)
                )
            ),
            metadata=(("authorization", f"Bearer {running.key}"),),
            timeout=10,
        )


def test_readiness_and_routing_follow_the_registrar(running: Running) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    wait_until(lambda: _status(running.gateway) == serving, timeout_s=90, what="ready")
    assert _generate(running).worker_id == "w-real"
    # ListModels carries what the worker reported through its registrar.
    with grpc.insecure_channel(running.gateway) as channel:
        listed = gateway_pb2_grpc.GatewayServiceStub(channel).ListModels(
            gateway_pb2.ListModelsRequest(),
            metadata=(("authorization", f"Bearer {running.key}"),),
            timeout=10,
        )
    models = {m.model.name: m for m in listed.models}
    tiny = models[MODEL]
    assert tiny.model.loaded and list(tiny.worker_ids) == ["w-real"]
    assert tiny.model.context_length > 0 and tiny.model.parameters > 0 and tiny.model.dtype
    embedding = [m for m in listed.models if m.model.embedding]
    assert [m.model.name for m in embedding] == ["all-minilm-l6-v2"]
    assert embedding[0].model.context_length == 256 and list(embedding[0].worker_ids) == ["w-real"]

    # The worker dies: its registrar reports it, the gateway stops routing to it.
    running.mesh.kill("inference")

    def refused() -> bool:
        try:
            _generate(running)
        except grpc.RpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)
        return False

    wait_until(refused, timeout_s=20, interval_s=0.2, what="no READY worker")
    wait_until(lambda: _status(running.gateway) != serving, timeout_s=20, what="not ready")

    # It comes back: ready again and serving.
    running.mesh.spawn("inference")
    wait_until(lambda: _status(running.gateway) == serving, timeout_s=90, what="ready again")

    def served() -> bool:
        try:
            return bool(_generate(running).worker_id == "w-real")
        except grpc.RpcError:
            return False

    # The gateway dropped the channel that failed to connect, so routing resumes as soon
    # as the registry says READY, not after a reconnect backoff (by then grpc's backoff
    # would be 10-20 s). 15 s leaves room for a first generation on a loaded 2-core box.
    wait_until(served, timeout_s=15, interval_s=0.1, what="routed to the restarted worker")
