"""A local mesh for tests and benchmarks, started from the same plan as ``llmesh up``.

``llmesh up`` supervises the plan's children (restarts, state file); :class:`LocalMesh`
runs the same children without restarts, so a test can stop, kill and restart one::

    options = mesh_options(tmp, models_dir=models, default_model="tiny-llama-test",
                           services=("registry", "inference", "gateway"))
    with LocalMesh(build_plan(options), home=tmp) as mesh:
        mesh.start()
        key = mesh.create_key(role="user", tenant="acme")
        ... mesh.address("gateway") ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh_cli.supervisor.child import tail
from llmesh_cli.supervisor.plan import (
    PlanOptions,
    ServiceSpec,
    child_names,
    llmesh_command,
)
from llmesh_cli.supervisor.probe import backing_ready


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mesh_options(
    home: Path,
    *,
    models_dir: Path,
    default_model: str,
    services: Sequence[str],
    workers: int = 1,
    replicas: Mapping[str, int] | None = None,
    metrics: Sequence[str] = (),
    embeddings: bool = True,
    args: Mapping[str, Sequence[str]] | None = None,
    env: Mapping[str, Mapping[str, str]] | None = None,
    log_level: str = "INFO",
) -> PlanOptions:
    """Plan options on free ports (metrics ports only for the children in ``metrics``)."""
    names = child_names(services, workers, replicas)
    return PlanOptions(
        home=home,
        models_dir=models_dir,
        default_model=default_model,
        services=tuple(services),
        ports={name: free_port() for name in names},
        metrics_ports={name: free_port() for name in metrics},
        embeddings=embeddings,
        log_level=log_level,
        workers=workers,
        replicas=dict(replicas or {}),
        args=dict(args or {}),
        env=dict(env or {}),
    )


def readiness(address: str, *, service: str = "readiness", timeout_s: float = 1.0) -> int:
    """The ``grpc.health.v1`` status of ``service`` at ``address``; -1 when unreachable."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return -1
        return int(reply.status)


class LocalMesh:
    """The plan's children as plain subprocesses (own process groups, no restarts)."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        home: Path,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.specs = {spec.name: spec for spec in specs}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # Children start from ``base_env`` (default: this process's environment) plus ``env``.
        # Every child carries LLMESH_HOME, so `llmesh keys` and the gateway share a store.
        base = os.environ if base_env is None else base_env
        self._env = {**base, "LLMESH_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}

    # -- addresses and files ------------------------------------------------------

    def address(self, name: str) -> str:
        return self.specs[name].address

    def port(self, name: str) -> int:
        return self.specs[name].port

    def log(self, name: str) -> Path:
        return self.specs[name].log_file

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    # -- lifecycle ----------------------------------------------------------------

    def start(self, *names: str, wait: bool = True) -> None:
        """Start ``names`` (default: every child, in plan order), then wait until ready."""
        chosen = list(names or self.specs)
        for name in chosen:
            self.spawn(name)
            if self.specs[name].gate:  # a backing server: ready before the next starts
                self.wait_ready(name)
        if wait:
            for name in chosen:
                self.wait_ready(name)

    def spawn(self, name: str) -> None:
        """Start one child (again), its output appended to its log."""
        spec = self.specs[name]
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        with spec.log_file.open("ab") as log:
            self.processes[name] = subprocess.Popen(
                spec.argv,
                env={**self._env, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def wait_ready(self, name: str, *, timeout_s: float | None = None) -> None:
        """Poll the child's readiness until SERVING; fail early if it exits."""
        spec = self.specs[name]
        limit = spec.start_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while not self.ready(name):
            if not self.running(name):
                raise RuntimeError(f"{name} exited while starting:\n{tail(spec.log_file, 20)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {limit:.0f}s:\n{tail(spec.log_file)}")
            time.sleep(0.1)

    def ready(self, name: str) -> bool:
        """Whether the child answers its readiness probe now."""
        spec = self.specs[name]
        if spec.probe != "grpc":
            return backing_ready(spec.probe, spec.address)
        return readiness(spec.address) == int(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, name: str, *, sig: int = signal.SIGTERM, grace_s: float = 15.0) -> int | None:
        """Signal the child's process group; SIGKILL after ``grace_s``. Returns its code."""
        process = self.processes.get(name)
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def kill(self, name: str) -> None:
        """SIGKILL: the child gets no chance to drain or deregister."""
        self.stop(name, sig=signal.SIGKILL)

    def close(self) -> None:
        """Stop every child in reverse start order."""
        for name in reversed(list(self.processes)):
            self.stop(name)

    def __enter__(self) -> LocalMesh:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- conveniences -------------------------------------------------------------

    def llmesh(self, *args: str, timeout_s: float = 120.0) -> str:
        """Run the ``llmesh`` CLI against this mesh's home; its stdout."""
        done = subprocess.run(
            llmesh_command(*args),
            env=self._env,
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        return done.stdout.decode().strip()

    def create_key(self, *, role: str, tenant: str) -> str:
        """A new API key in the gateway's store (``llmesh keys create``)."""
        return self.llmesh(
            "keys", "--data-dir", str(self.home), "create", "--role", role, "--tenant", tenant
        )
