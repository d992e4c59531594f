"""The gateway following a real registry fed by a real registrar sidecar: readiness comes
with the first READY worker, routing stops the moment the registrar reports the worker
gone, and comes back with it. Processes: registry, inference, registrar, gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.polling import wait_until
from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODEL = "tiny-llama-test"
LLMESH = [sys.executable, "-m", "llmesh.cli.main"]


@dataclass
class Running:
    gateway: str
    key: str
    worker_args: list[str]
    env: dict[str, str]
    log: Path
    procs: dict[str, subprocess.Popen[bytes]]

    def spawn(self, name: str, args: list[str]) -> None:
        out = self.log.with_name(f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=out, stderr=out)


def _status(address: str, service: str = "readiness") -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return -1
        return int(reply.status)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("e2e-registrar")
    ports = {n: free_port() for n in ("registry", "worker", "registrar", "gateway")}
    env = {**os.environ, "LLMESH_HOME": str(tmp), "PYTHONUNBUFFERED": "1"}
    worker_args = [
        *LLMESH,
        "serve",
        "inference",
        "--port",
        str(ports["worker"]),
        "--models-dir",
        str(tiny_model_dir),
        "--default-model",
        MODEL,
        "--data-dir",
        str(tmp / "worker"),
    ]
    state = Running(
        gateway=f"127.0.0.1:{ports['gateway']}",
        key="",
        worker_args=worker_args,
        env=env,
        log=tmp / "x.log",
        procs={},
    )
    try:
        state.spawn(
            "registry",
            [
                *LLMESH,
                "serve",
                "registry",
                "--port",
                str(ports["registry"]),
                "--lease-ttl-ms",
                "1500",
                "--evict-after-ms",
                "60000",
            ],
        )
        state.spawn("worker", worker_args)
        state.spawn(
            "gateway",
            [
                *LLMESH,
                "serve",
                "gateway",
                "--port",
                str(ports["gateway"]),
                "--data-dir",
                str(tmp),
                "--registry",
                f"127.0.0.1:{ports['registry']}",
            ],
        )
        state.key = (
            subprocess.run(
                [
                    *LLMESH,
                    "keys",
                    "--data-dir",
                    str(tmp),
                    "create",
                    "--role",
                    "user",
                    "--tenant",
                    "t",
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            .stdout.decode()
            .strip()
        )
        # No worker is registered yet: the gateway is up but not ready.
        wait_until(lambda: _status(state.gateway, "liveness") == 1, timeout_s=60, what="live")
        assert _status(state.gateway) == health_pb2.HealthCheckResponse.NOT_SERVING
        state.spawn(
            "registrar",
            [
                *LLMESH,
                "serve",
                "registrar",
                "--port",
                str(ports["registrar"]),
                "--worker",
                f"127.0.0.1:{ports['worker']}",
                "--registry",
                f"127.0.0.1:{ports['registry']}",
                "--worker-id",
                "w-real",
                "--probe-timeout-s",
                "0.5",
            ],
        )
        yield state
    finally:
        for proc in reversed(list(state.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in state.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _generate(running: Running) -> Any:
    with grpc.insecure_channel(running.gateway) as channel:
        return gateway_pb2_grpc.GatewayServiceStub(channel).Generate(
            gateway_pb2.GenerateRequest(
                prompt="hi", sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0)
            ),
            metadata=(("authorization", f"Bearer {running.key}"),),
            timeout=10,
        )


def test_readiness_and_routing_follow_the_registrar(running: Running) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    wait_until(lambda: _status(running.gateway) == serving, timeout_s=90, what="ready")
    assert _generate(running).worker_id == "w-real"

    # The worker dies: its registrar reports it, the gateway stops routing to it.
    running.procs["worker"].send_signal(signal.SIGKILL)
    running.procs["worker"].wait()

    def refused() -> bool:
        try:
            _generate(running)
        except grpc.RpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)
        return False

    wait_until(refused, timeout_s=20, interval_s=0.2, what="no READY worker")
    wait_until(lambda: _status(running.gateway) != serving, timeout_s=20, what="not ready")

    # It comes back: ready again and serving.
    running.spawn("worker", running.worker_args)
    wait_until(lambda: _status(running.gateway) == serving, timeout_s=90, what="ready again")

    def served() -> bool:
        try:
            return bool(_generate(running).worker_id == "w-real")
        except grpc.RpcError:
            return False

    # The gateway dropped the channel that failed to connect, so routing resumes as soon
    # as the registry says READY, not after a reconnect backoff.
    wait_until(served, timeout_s=5, interval_s=0.1, what="routed to the restarted worker")
