"""What ``llmesh up`` runs: one :class:`ServiceSpec` per child, on loopback."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Start order; shutdown goes the other way (gateway first, registry last).
ALL_SERVICES: tuple[str, ...] = ("registry", "inference", "registrar", "memory", "gateway")
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 50051,
    "registry": 50052,
    "memory": 50053,
    "inference": 50054,
    "registrar": 50055,
}
DEFAULT_METRICS_PORTS: dict[str, int] = {
    "gateway": 9461,
    "registry": 9462,
    "memory": 9463,
    "inference": 9464,
    "registrar": 9465,
}
APP_MODULES: dict[str, str] = {
    "gateway": "llmesh_gateway.app",
    "registry": "llmesh_registry.app",
    "registrar": "llmesh_registry.app",
    "inference": "llmesh_inference.app",
    "memory": "llmesh_memory.app",
}


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
    return (sys.executable, "-m", "llmesh.cli.main", *args)


def build_plan(options: PlanOptions) -> list[ServiceSpec]:
    """The children to start, in start order."""
    wanted = [name for name in ALL_SERVICES if name in options.services]
    ports = options.ports
    logs = options.home / "logs"

    def common(name: str) -> list[str]:
        args = ["--port", str(ports[name])]
        if options.metrics_ports is not None:
            args += ["--metrics-port", str(options.metrics_ports[name])]
        return args

    def address(name: str) -> str:
        return f"127.0.0.1:{ports[name]}"

    specs: list[ServiceSpec] = []
    for name in wanted:
        args: list[str] = ["serve", name, *common(name)]
        timeout = 60.0
        if name == "inference":
            args += [
                "--models-dir", str(options.models_dir),
                "--default-model", options.default_model,
            ]  # fmt: skip
            if not options.embeddings:
                args.append("--no-embeddings")
            timeout = 300.0
        elif name == "registrar":
            args += [
                "--worker", address("inference"),
                "--registry", address("registry"),
                "--worker-id", f"local-{ports['inference']}",
            ]  # fmt: skip
        elif name == "memory":
            args += ["--data-dir", str(options.home / "memory"), "--embedder", address("inference")]
        elif name == "gateway":
            args += [
                # The key store at <home>/gateway.db, where `llmesh keys` looks by default.
                "--data-dir", str(options.home),
                "--registry", address("registry"),
                "--memory", address("memory"),
            ]  # fmt: skip
        specs.append(
            ServiceSpec(
                name=name,
                argv=llmesh_command(*args),
                port=ports[name],
                log_file=logs / f"{name}.log",
                start_timeout_s=timeout,
                # Settings every service reads from its environment.
                env={f"LLMESH_{name.upper()}_LOG_LEVEL": options.log_level},
            )
        )
    return specs
