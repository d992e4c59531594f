"""Entry point of ``llmesh serve registrar --worker ADDR [--registry ADDR]``.

The registrar serves only ``grpc.health.v1`` (readiness: the worker is
registered) on its own port, so Kubernetes can probe the sidecar too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llmesh.kernel.cli import parse_service_args, service_parser
from llmesh.kernel.server import ServiceHost, run_service
from llmesh_registry.settings import RegistrarSettings


def build_parser() -> argparse.ArgumentParser:
    parser = service_parser(
        "registrar",
        "Sidecar that registers an inference worker and heartbeats its health and load.",
    )
    parser.add_argument("--worker", help="host:port of the inference worker (default :50054)")
    parser.add_argument("--registry", help="host:port of the registry (default :50052)")
    parser.add_argument("--worker-id", help="id in the registry (default <hostname>-<port>)")
    parser.add_argument(
        "--advertise", dest="advertise_address", help="address others use to reach the worker"
    )
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="worker label"
    )
    parser.add_argument("--probe-timeout-s", type=float, help="deadline of each probe")
    parser.add_argument(
        "--heartbeat-interval-s", type=float, help="fixed period (default: a third of the TTL)"
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    labels: dict[str, str] | None = None
    if args.label:
        labels = dict(item.split("=", 1) for item in args.label if "=" in item)
    return {
        "worker": args.worker,
        "registry": args.registry,
        "worker_id": args.worker_id,
        "advertise_address": args.advertise_address,
        "labels": labels,
        "probe_timeout_s": args.probe_timeout_s,
        "heartbeat_interval_s": args.heartbeat_interval_s,
    }


def default_worker_id(worker_address: str) -> str:
    """``<hostname>-<port>``: stable across restarts, unique per host and port."""
    port = worker_address.rpartition(":")[2]
    return f"{socket.gethostname()}-{port}"


@contextlib.asynccontextmanager
async def registrar_setup(host: ServiceHost, settings: RegistrarSettings) -> AsyncIterator[None]:
    """Run the registrar beside ``host``; on exit mark DRAINING and deregister."""
    from llmesh.kernel.channels import create_channel
    from llmesh.kernel.logging import get_logger
    from llmesh.v1 import registry_pb2_grpc
    from llmesh_registry.probe import WorkerProbe
    from llmesh_registry.registrar import Registrar, WorkerIdentity

    log = get_logger("llmesh_registry.registrar")
    worker_channel = create_channel(settings.worker, tls=settings.client_tls)
    registry_channel = create_channel(settings.registry, tls=settings.client_tls)
    identity = WorkerIdentity(
        worker_id=settings.worker_id or default_worker_id(settings.worker),
        address=settings.advertise_address or settings.worker,
        labels=dict(settings.labels),
    )
    registrar = Registrar(
        identity,
        WorkerProbe(worker_channel, timeout_s=settings.probe_timeout_s),
        registry_pb2_grpc.RegistryServiceStub(registry_channel),
        registry_timeout_s=settings.registry_timeout_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
    )

    async def run() -> None:
        task = asyncio.create_task(registrar.run(), name="registrar")
        await registrar.registered.wait()
        await host.health.set_ready(True)
        await task

    runner = asyncio.create_task(run(), name="registrar-runner")
    try:
        yield
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        log.info("shutting down: marking %s DRAINING", identity.worker_id)
        await registrar.drain(timeout_s=settings.drain_timeout_s)
        await worker_channel.close(None)
        await registry_channel.close(None)


def main(argv: Sequence[str]) -> int:
    """``llmesh serve registrar [flags]``; returns the exit code."""
    settings, _ = parse_service_args(RegistrarSettings, build_parser(), argv, extra=_overrides)
    return run_service(
        settings,
        service="registrar",
        service_names=[],
        setup=lambda host: registrar_setup(host, settings),
    )
