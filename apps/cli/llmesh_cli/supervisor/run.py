"""``llmesh up`` and ``llmesh status`` behind the CLI flags."""

from __future__ import annotations

import asyncio
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from llmesh_cli.supervisor.models import ensure_default_model, ensure_tiny_model
from llmesh_cli.supervisor.plan import ALL_SERVICES, PlanOptions, installed
from llmesh_cli.supervisor.probe import SERVING
from llmesh_cli.supervisor.profiles import (
    build_profile,
    missing_backing,
    profile_children,
    profile_metrics_ports,
    profile_ports,
)
from llmesh_cli.supervisor.restart import RestartPolicy
from llmesh_cli.supervisor.state import read_state
from llmesh_cli.supervisor.supervisor import Supervisor
from llmesh_cli.supervisor.table import services_table


@dataclass(frozen=True)
class UpOptions:
    """Everything ``llmesh up`` was asked for."""

    home: Path
    services: list[str] | None
    free_ports: bool
    metrics: bool
    model_size: str
    model: str
    models_dir: Path
    embeddings: bool
    grace_s: float
    max_crashes: int
    crash_window_s: float
    backoff_initial_s: float
    backoff_max_s: float
    log_level: str
    profile: str = "local"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _choose_services(options: UpOptions, console: Console) -> list[str] | None:
    requested = options.services or list(ALL_SERVICES)
    unknown = [s for s in requested if s not in ALL_SERVICES]
    if unknown:
        console.print(
            f"unknown service(s): {', '.join(unknown)}; choose from {', '.join(ALL_SERVICES)}"
        )
        return None
    chosen = []
    for name in requested:
        if installed(name):
            chosen.append(name)
        else:
            console.print(f"[yellow]{name} is not installed here; starting without it[/]")
    if "registrar" in chosen and not {"registry", "inference"} <= set(chosen):
        chosen.remove("registrar")  # it needs both a worker and a registry
    return chosen


async def run_up(options: UpOptions) -> int:
    """Start the mesh, supervise it until SIGINT/SIGTERM, then drain. Returns the exit code."""
    console = Console(highlight=False)
    running = read_state(options.home)
    if running is not None:
        console.print(
            f"llmesh up is already running (pid {running.supervisor_pid}); see `llmesh status`"
        )
        return 1
    services = _choose_services(options, console)
    if services is None:
        return 2
    if options.profile == "production":
        missing = missing_backing()
        for line in missing:
            console.print(f"[red]the production profile needs {line}[/]")
        if missing:
            return 1
    names = profile_children(options.profile, services)
    ports = profile_ports(options.profile, services)
    metrics_ports = profile_metrics_ports(options.profile, services) if options.metrics else None
    if options.free_ports:
        ports = {name: _free_port() for name in ports}
        if metrics_ports is not None:
            metrics_ports = {name: _free_port() for name in metrics_ports}
    busy = [f"{ports[n]} ({n})" for n in names if not _port_free(ports[n])]
    if metrics_ports is not None:
        busy += [
            f"{port} ({n} metrics)" for n, port in metrics_ports.items() if not _port_free(port)
        ]
    if busy:
        console.print(
            f"port(s) in use: {', '.join(busy)}. Stop what uses them, or run "
            "`llmesh up --free-ports` (and --no-metrics)."
        )
        return 1
    if "inference" in services and options.model_size == "smollm2":
        from llmesh_inference.importing import ModelImportError

        try:
            await ensure_default_model(options.models_dir, name=options.model, console=console)
        except ModelImportError as exc:
            console.print(f"[red]{exc}[/]")
            return 1
    elif "inference" in services:
        await ensure_tiny_model(
            options.models_dir, size=options.model_size, name=options.model, console=console
        )
    profile = build_profile(
        options.profile,
        PlanOptions(
            home=options.home,
            models_dir=options.models_dir,
            default_model=options.model,
            services=services,
            ports=ports,
            metrics_ports=metrics_ports,
            embeddings=options.embeddings,
            log_level=options.log_level,
        ),
    )
    plan = profile.specs
    for spec in plan:
        spec.env.setdefault("LLMESH_HOME", str(options.home))

    def policy() -> RestartPolicy:
        return RestartPolicy(
            initial_s=options.backoff_initial_s,
            max_s=options.backoff_max_s,
            max_crashes=options.max_crashes,
            window_s=options.crash_window_s,
        )

    supervisor = Supervisor(
        plan,
        home=options.home,
        say=lambda line: console.print(line, markup=False),
        policy=policy,
        grace_s=options.grace_s,
        profile=profile.name,
        key_store_url=profile.key_store_url,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop)
    console.print(
        f"starting the {profile.name} profile: {', '.join(s.name for s in plan)} "
        f"(logs in {options.home / 'logs'})"
    )
    try:
        ready = await supervisor.start()
        health = {name: (SERVING if ok else "NOT_READY") for name, ok in ready.items()}
        console.print(services_table(supervisor.records(), health))
        if all(ready.values()):
            console.print("mesh is up. `llmesh status` shows it; Ctrl-C stops it.")
            if profile.key_store_url:
                console.print(
                    f"API keys are in PostgreSQL ({profile.key_store_url}): "
                    "`llmesh keys create ...` finds it while this runs."
                )
        else:
            console.print("some services are not ready; see their logs. Ctrl-C stops the rest.")
        await supervisor.wait_stopped()
        console.print("stopping: draining every service (Ctrl-C again to kill now)")
    finally:
        await supervisor.shutdown()
    console.print("all services stopped")
    return 0
