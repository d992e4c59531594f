"""Entry point of ``llmesh serve registry``."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llmesh.kernel.cli import parse_service_args, service_parser
from llmesh.kernel.server import ServiceHost, run_service
from llmesh_registry.settings import RegistrySettings

SERVICE_NAME = "llmesh.v1.RegistryService"


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
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("backend", "redis_url", "lease_ttl_ms", "evict_after_ms")
    return {name: getattr(args, name) for name in names}


def main(argv: Sequence[str]) -> int:
    """``llmesh serve registry [flags]``; returns the exit code."""
    settings, _ = parse_service_args(RegistrySettings, build_parser(), argv, extra=_overrides)

    @contextlib.asynccontextmanager
    async def setup(host: ServiceHost) -> AsyncIterator[None]:
        from llmesh_registry.service import registry_service

        async with registry_service(host, settings):
            yield

    return run_service(settings, service="registry", service_names=[SERVICE_NAME], setup=setup)
