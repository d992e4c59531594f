"""The gateway e2e mesh: registry, memory (SQLite), two MLX inference workers (tiny model)
and the gateway, each its own process (`llmesh serve ...`, from the plan of `llmesh up`).
Every process exports spans over OTLP to a collector in the test process.

Workers are registered in the registry by the test with a long lease (standing in for
the registrar), so a killed worker stays READY in the registry: exactly the case the
gateway's failover and circuit breaker exist for.
"""

from __future__ import annotations

import signal
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from e2etest.meshes import LONG_LEASE, MODEL, create_user_keys, otlp_env, register_worker
from llmesh.testing.rpc import Collector
from llmesh.v1 import common_pb2
from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
from llmesh_cli.supervisor.plan import build_plan

USERS = {"alice": "acme", "bob": "globex", "carol": "acme", "dave": "initech"}
JWT_SECRET = b"e2e-secret-" + b"x" * 40
LLMESH = [sys.executable, "-m", "llmesh_cli.main"]


@dataclass
class Proc:
    """One child of the mesh, as the tests below handle it."""

    mesh: LocalMesh
    name: str

    @property
    def port(self) -> int:
        return self.mesh.port(self.name)

    @property
    def log(self) -> Path:
        return self.mesh.log(self.name)

    def start(self) -> None:
        self.mesh.spawn(self.name)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.mesh.stop(self.name, sig=sig)


@dataclass
class Mesh:
    gateway: str
    registry: str
    workers: dict[str, Proc]
    procs: list[Proc]
    metrics_port: int
    collector: Collector
    keys: dict[str, str] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # child name -> port
    home: Path | None = None

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read()
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _gateway_env(tmp: Path) -> dict[str, str]:
    return {
        "LLMESH_GATEWAY_JWT__HS256_SECRET_FILE": str(tmp / "jwt.secret"),
        "LLMESH_GATEWAY_JWT__AUDIENCE": "llmesh",
        "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "1200",
        "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "120",
        "LLMESH_GATEWAY_RATE_LIMIT__BURST_SECONDS": "10",
        "LLMESH_GATEWAY_ROUTING__BREAKER_THRESHOLD": "3",
        "LLMESH_GATEWAY_ROUTING__BREAKER_COOLDOWN_S": "3.0",
    }


@contextmanager
def start_gateway_mesh(
    tmp: Path,
    models_dir: Path,
    *,
    metrics: tuple[str, ...] = ("gateway",),
    gateway_env: dict[str, str] | None = None,
) -> Iterator[Mesh]:
    """Start the mesh in ``tmp`` with keys for admin (tenant ops), alice and carol (acme),
    bob (globex) and dave (initech); stop it on exit. ``metrics``: the children that
    serve /metrics; ``gateway_env`` overrides the gateway's settings."""
    collector = Collector()
    otlp = collector.start()
    (tmp / "jwt.secret").write_bytes(JWT_SECRET)

    # The plan of `llmesh up`, two workers and no registrar: workers are registered below
    # with a long lease, so a killed worker stays READY in the registry.
    workers = {"w0": "inference", "w1": "inference-1"}
    options = mesh_options(
        tmp,
        models_dir=models_dir,
        default_model=MODEL,
        services=("registry", "inference", "memory", "gateway"),
        workers=2,
        metrics=metrics,
        args={
            "registry": LONG_LEASE,
            **{
                name: ["--max-batch-size", "4", "--data-dir", str(tmp / wid)]
                for wid, name in workers.items()
            },
        },
        env={"gateway": _gateway_env(tmp) | (gateway_env or {})},
    )
    env = otlp_env(otlp, options.services)
    with LocalMesh(build_plan(options), home=tmp, env=env) as local:
        local.start(wait=False)
        for wid, name in workers.items():
            local.wait_ready(name)
            register_worker(local.address("registry"), wid, f"127.0.0.1:{local.port(name)}")
        for name in ("registry", "memory", "gateway"):
            local.wait_ready(name)
        mesh = Mesh(
            gateway=local.address("gateway"),
            registry=local.address("registry"),
            workers={wid: Proc(local, name) for wid, name in workers.items()},
            procs=[Proc(local, name) for name in local.specs],
            metrics_port=(options.metrics_ports or {}).get("gateway", 0),
            collector=collector,
            metrics_ports=dict(options.metrics_ports or {}),
            home=tmp,
        )
        # Bootstrap: the first admin key straight into the store, the rest over the API.
        mesh.keys = {"admin": local.create_key(role="admin", tenant="ops")}
        mesh.keys.update(create_user_keys(mesh.gateway, mesh.keys["admin"], USERS))
        try:
            yield mesh
        finally:
            collector.stop()


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``key`` as a Bearer token."""
    return (("authorization", f"Bearer {key}"),)


async def error(awaitable: Any) -> grpc.aio.AioRpcError:
    """The error ``awaitable`` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


def greedy(max_tokens: int) -> common_pb2.SamplingParams:
    """Deterministic sampling of at most ``max_tokens``."""
    return common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)
