"""Entry points of ``llmesh serve registry`` and ``llmesh serve registrar``.

Flags and settings here; the parts are wired in :mod:`llmesh_registry.wiring`.
The registrar serves only ``grpc.health.v1`` (readiness: the worker is registered) on
its own port, so Kubernetes can probe the sidecar too.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llmesh.kernel.cli import parse_service_args, service_parser
from llmesh.kernel.server import ServiceHost, run_service
from llmesh_registry.settings import RegistrarSettings, RegistrySettings


def build_parser() -> argparse.ArgumentParser:
    parser = service_parser(
        "registry", "Worker registry with leases (settings also from LLMESH_REGISTRY_* env)."
    )
    parser.add_argument("--backend", choices=["memory", "redis"], help="state store")
    parser.add_argument("--redis-url", help="redis://host:port/db for the redis backend")
    parser.add_argument("--lease-ttl-ms", type=int, help="lease lifetime (default 10000)")
    parser.add_argument(
        "--evict-after-ms", type=int, help="eviction delay after a lease lapses (default 20000)"
    )
    parser.add_argument(
        "--warmup-ms",
        type=int,
        help="after a start, in-memory backend: watchers keep known workers this long "
        "(default one lease TTL, at least 5000; 0 off)",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("backend", "redis_url", "lease_ttl_ms", "evict_after_ms", "warmup_ms")
    return {name: getattr(args, name) for name in names}


def main(argv: Sequence[str]) -> int:
    """``llmesh serve registry [flags]``; returns the exit code."""
    settings, _ = parse_service_args(RegistrySettings, build_parser(), argv, extra=_overrides)

    @contextlib.asynccontextmanager
    async def setup(host: ServiceHost) -> AsyncIterator[None]:
        from llmesh_registry.wiring import wire

        async with wire(host, settings):
            yield

    from llmesh_registry.wiring import SERVICE_NAMES

    return run_service(settings, service="registry", service_names=list(SERVICE_NAMES), setup=setup)


def build_registrar_parser() -> argparse.ArgumentParser:
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


def _registrar_overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def registrar_main(argv: Sequence[str]) -> int:
    """``llmesh serve registrar [flags]``; returns the exit code."""
    settings, _ = parse_service_args(
        RegistrarSettings, build_registrar_parser(), argv, extra=_registrar_overrides
    )
    from llmesh_registry.wiring import REGISTRAR_SERVICE_NAMES, wire_registrar

    return run_service(
        settings,
        service="registrar",
        service_names=list(REGISTRAR_SERVICE_NAMES),
        setup=lambda host: wire_registrar(host, settings),
    )
