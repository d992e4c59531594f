"""``llmesh up`` and ``llmesh status`` behind the CLI flags."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from rich.console import Console

from llmesh_cli.supervisor.models import ensure_tiny_model
from llmesh_cli.supervisor.plan import (
    ALL_SERVICES,
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    PlanOptions,
    build_plan,
    installed,
)
from llmesh_cli.supervisor.probe import SERVING, health_of
from llmesh_cli.supervisor.restart import RestartPolicy
from llmesh_cli.supervisor.state import ServiceRecord, read_state
from llmesh_cli.supervisor.supervisor import Supervisor
from llmesh_cli.supervisor.table import services_table, workers_table


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
    ports = dict(DEFAULT_PORTS)
    metrics_ports: dict[str, int] | None = dict(DEFAULT_METRICS_PORTS) if options.metrics else None
    if options.free_ports:
        ports = {name: _free_port() for name in ports}
        if metrics_ports is not None:
            metrics_ports = {name: _free_port() for name in metrics_ports}
    busy = [f"{ports[n]} ({n})" for n in services if not _port_free(ports[n])]
    if metrics_ports is not None:
        busy += [
            f"{metrics_ports[n]} ({n} metrics)"
            for n in services
            if not _port_free(metrics_ports[n])
        ]
    if busy:
        console.print(
            f"port(s) in use: {', '.join(busy)}. Stop what uses them, or run "
            "`llmesh up --free-ports` (and --no-metrics)."
        )
        return 1
    if "inference" in services:
        await ensure_tiny_model(
            options.models_dir, size=options.model_size, name=options.model, console=console
        )
    plan = build_plan(
        PlanOptions(
            home=options.home,
            models_dir=options.models_dir,
            default_model=options.model,
            services=services,
            ports=ports,
            metrics_ports=metrics_ports,
            embeddings=options.embeddings,
            log_level=options.log_level,
        )
    )
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
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.request_stop)
    console.print(f"starting {', '.join(services)} (logs in {options.home / 'logs'})")
    try:
        ready = await supervisor.start()
        health = {name: (SERVING if ok else "NOT_READY") for name, ok in ready.items()}
        console.print(services_table(supervisor.records(), health))
        if all(ready.values()):
            console.print("mesh is up. `llmesh status` shows it; Ctrl-C stops it.")
        else:
            console.print("some services are not ready; see their logs. Ctrl-C stops the rest.")
        await supervisor.wait_stopped()
        console.print("stopping: draining every service (Ctrl-C again to kill now)")
    finally:
        await supervisor.shutdown()
    console.print("all services stopped")
    return 0


async def _workers(address: str) -> list[object] | str:
    from llmesh.kernel.context import deadline_scope
    from llmesh.v1 import registry_pb2, registry_pb2_grpc
    from llmesh_cli.client import open_channel, unary

    async with open_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        try:
            with deadline_scope(2.0, name="llmesh status"):
                reply = await unary(
                    stub.ListWorkers, registry_pb2.RegistryServiceListWorkersRequest()
                )
        except grpc.aio.AioRpcError as exc:
            return f"registry at {address} unreachable ({exc.code().name})"
        return list(reply.workers)


async def status(home: Path, *, registry: str | None, as_json: bool) -> int:
    """Print services and workers; 0 when every service answers SERVING."""
    from google.protobuf import json_format

    console = Console(highlight=False)
    state = read_state(home)
    if state is not None:
        records = state.services
    else:
        records = [
            ServiceRecord(name=n, address=f"127.0.0.1:{p}", pid=None, log="", status="unknown")
            for n, p in sorted(DEFAULT_PORTS.items(), key=lambda kv: ALL_SERVICES.index(kv[0]))
        ]
    health_list = await asyncio.gather(*(health_of(r.address) for r in records))
    health = {r.name: h for r, h in zip(records, health_list, strict=True)}
    registry_address = registry or next(
        (r.address for r in records if r.name == "registry"), "127.0.0.1:50052"
    )
    workers = await _workers(registry_address)
    if as_json:
        payload = {
            "supervisor_pid": state.supervisor_pid if state else None,
            "services": [asdict(r) | {"health": health[r.name]} for r in records],
            "workers": workers
            if isinstance(workers, str)
            else [json_format.MessageToDict(w) for w in workers],  # type: ignore[arg-type]
        }
        print(json.dumps(payload, indent=2))
    else:
        if state is None:
            console.print(f"llmesh up is not running (no live state in {home}); probing defaults")
        console.print(services_table(records, health))
        if isinstance(workers, str):
            console.print(workers)
        else:
            console.print(workers_table(workers))  # type: ignore[arg-type]
    return 0 if state is not None and all(h == SERVING for h in health.values()) else 1
