"""What a local mesh runs: one :class:`ServiceSpec` per child, on loopback.

The single description of a local mesh (which services, their ports, flags and
environment), used by ``llmesh up`` (supervised, restarts) and by tests and benchmarks
(:mod:`llmesh_cli.supervisor.mesh`, no restarts) alike.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Start order; shutdown goes the other way (the OpenAI door first, registry last).
ALL_SERVICES: tuple[str, ...] = (
    "registry", "inference", "registrar", "memory", "gateway", "openai",
)  # fmt: skip
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 50051,
    "registry": 50052,
    "memory": 50053,
    "inference": 50054,
    "registrar": 50055,
    "openai": 8080,  # HTTP: the OpenAI-compatible API (docs/openai.md)
}
DEFAULT_METRICS_PORTS: dict[str, int] = {
    "gateway": 9461,
    "registry": 9462,
    "memory": 9463,
    "inference": 9464,
    "registrar": 9465,
    "openai": 9466,
}
APP_MODULES: dict[str, str] = {
    "gateway": "llmesh_gateway.app",
    "registry": "llmesh_registry.app",
    "registrar": "llmesh_registry.app",
    "inference": "llmesh_inference.app",
    "memory": "llmesh_memory.app",
    "openai": "llmesh_openai.app",
}
# How a child's readiness is probed when not grpc.health.v1 (see ServiceSpec.probe).
PROBES: dict[str, str] = {"openai": "http"}


@dataclass(frozen=True)
class ServiceSpec:
    """One child: the command, where it listens, and where its log goes."""

    name: str
    argv: tuple[str, ...]
    port: int
    log_file: Path
    # How long it may take to become ready (inference loads a model).
    start_timeout_s: float = 120.0
    env: dict[str, str] = field(default_factory=dict)
    # Which service it runs (``inference`` for the workers ``inference``, ``inference-1`` ...).
    kind: str = ""
    # How readiness is probed: ``grpc`` (grpc.health.v1 ``readiness``), or a backing
    # server's own protocol: ``redis`` (PING), ``postgres`` (SELECT 1).
    probe: str = "grpc"
    # Start the children after this one only once it is ready (backing servers).
    gate: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class PlanOptions:
    """Choices for the local mesh."""

    home: Path
    models_dir: Path
    default_model: str
    services: Sequence[str] = ALL_SERVICES
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    metrics_ports: dict[str, int] | None = field(
        default_factory=lambda: dict(DEFAULT_METRICS_PORTS)
    )
    embeddings: bool = True
    log_level: str = "INFO"
    # Inference workers: ``inference``, then ``inference-1``, ``inference-2`` ... each with
    # its registrar (``registrar``, ``registrar-1`` ...) when registrars are in ``services``.
    workers: int = 1
    # Replicas of ``gateway`` and ``registry``: ``gateway``, ``gateway-1`` ... Gateway i
    # watches registry i mod R and registrar i registers with registry i mod R (the
    # registries must then share a backend to see the same workers).
    replicas: Mapping[str, int] = field(default_factory=dict)
    # Extra flags per child name, after the plan's own (a repeated flag overrides it).
    args: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Extra environment per child name.
    env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def installed(service: str) -> bool:
    """Whether the service's entry module exists in this installation."""
    try:
        return importlib.util.find_spec(APP_MODULES[service]) is not None
    except ModuleNotFoundError:
        return False


def available_services(is_installed: Callable[[str], bool] = installed) -> list[str]:
    return [name for name in ALL_SERVICES if is_installed(name)]


def llmesh_command(*args: str) -> tuple[str, ...]:
    """Run the CLI with this interpreter (works in a venv without PATH set up)."""
    return (sys.executable, "-m", "llmesh_cli.main", *args)


def worker_name(index: int, kind: str = "inference") -> str:
    """``inference`` / ``registrar`` for the first worker, ``inference-<i>`` ... after."""
    return kind if index == 0 else f"{kind}-{index}"


def child_index(name: str) -> int:
    """0 for ``gateway``, 1 for ``gateway-1`` ..."""
    _, sep, index = name.partition("-")
    return int(index) if sep and index.isdigit() else 0


def child_names(
    services: Sequence[str], workers: int = 1, replicas: Mapping[str, int] | None = None
) -> list[str]:
    """The children of a plan, in start order."""
    names: list[str] = []
    for kind in ALL_SERVICES:
        if kind not in services:
            continue
        if kind in ("inference", "registrar"):
            count = workers
        elif kind in ("gateway", "registry"):
            count = (replicas or {}).get(kind, 1)
        else:
            count = 1
        names += [worker_name(i, kind) for i in range(count)]
    return names


def build_plan(options: PlanOptions) -> list[ServiceSpec]:
    """The children to start, in start order."""
    ports = options.ports
    logs = options.home / "logs"
    names = child_names(options.services, options.workers, options.replicas)
    registries = options.replicas.get("registry", 1)

    def address(name: str) -> str:
        return f"127.0.0.1:{ports[name]}"

    def registry_for(name: str) -> str:
        """The registry child ``name`` talks to: registry i mod R for the i-th replica."""
        return address(worker_name(child_index(name) % registries, "registry"))

    def flags(name: str, kind: str) -> tuple[list[str], float]:
        """The service's own flags and its start timeout."""
        if kind == "inference":
            args = ["--models-dir", str(options.models_dir)]
            if options.default_model:  # none: a worker for embeddings only
                args += ["--default-model", options.default_model]
            if not options.embeddings:
                args.append("--no-embeddings")
            return args, 300.0
        if kind == "registrar":
            worker = name.replace("registrar", "inference", 1)
            return [
                "--worker", address(worker),
                "--registry", registry_for(name),
                "--worker-id", f"local-{ports[worker]}",
            ], 60.0  # fmt: skip
        if kind == "memory":
            args = ["--data-dir", str(options.home / "memory")]
            if "registry" in names and "registrar" in names:
                # Workers register themselves: embed on any READY one, with failover.
                args += ["--embedder-registry", address("registry")]
            elif "inference" in names:
                args += ["--embedder", address("inference")]
            return args, 60.0
        if kind == "gateway":
            # The key store at <home>/gateway.db, where `llmesh keys` looks by default.
            args = ["--data-dir", str(options.home)]
            if "registry" in names:
                args += ["--registry", registry_for(name)]
            if "memory" in names:
                args += ["--memory", address("memory")]
            return args, 60.0
        if kind == "openai" and "gateway" in names:
            return ["--gateway", address("gateway")], 60.0
        return [], 60.0

    specs: list[ServiceSpec] = []
    for name in names:
        kind = name.split("-", 1)[0]
        args = ["serve", kind, "--port", str(ports[name])]
        if options.metrics_ports is not None and name in options.metrics_ports:
            args += ["--metrics-port", str(options.metrics_ports[name])]
        own, timeout = flags(name, kind)
        args += [*own, *options.args.get(name, ())]
        specs.append(
            ServiceSpec(
                name=name,
                argv=llmesh_command(*args),
                port=ports[name],
                log_file=logs / f"{name}.log",
                start_timeout_s=timeout,
                # Settings every service reads from its environment.
                env={
                    f"LLMESH_{kind.upper()}_LOG_LEVEL": options.log_level,
                    **options.env.get(name, {}),
                },
                kind=kind,
                probe=PROBES.get(kind, "grpc"),
            )
        )
    return specs
