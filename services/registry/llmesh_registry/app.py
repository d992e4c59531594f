"""Entry point of ``llmesh serve registry``."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence

from llmesh.kernel.config import ConfigError, load_settings
from llmesh.kernel.server import ServiceHost, run_service

from llmesh_registry.servicer import SERVICE_NAME
from llmesh_registry.settings import RegistrySettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmesh serve registry",
        description="Worker registry with leases (settings also from LLMESH_REGISTRY_* env).",
    )
    parser.add_argument("--config", help="YAML/JSON settings file")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port (default 50052)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (e.g. 9462)")
    parser.add_argument("--backend", choices=["memory", "redis"], help="state store")
    parser.add_argument("--redis-url", help="redis://host:port/db for the redis backend")
    parser.add_argument("--lease-ttl-ms", type=int, help="lease lifetime (default 10000)")
    parser.add_argument(
        "--evict-after-ms", type=int, help="eviction delay after a lease lapses (default 20000)"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """``llmesh serve registry [flags]``; returns the exit code."""
    args = build_parser().parse_args(list(argv))
    try:
        settings = load_settings(
            RegistrySettings,
            config_file=args.config,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            backend=args.backend,
            redis_url=args.redis_url,
            lease_ttl_ms=args.lease_ttl_ms,
            evict_after_ms=args.evict_after_ms,
        )
    except ConfigError as exc:
        print(f"llmesh serve registry: {exc}")
        return 2

    @contextlib.asynccontextmanager
    async def setup(host: ServiceHost) -> AsyncIterator[None]:
        from llmesh_registry.service import registry_service

        async with registry_service(host, settings):
            yield

    return run_service(settings, service="registry", service_names=[SERVICE_NAME], setup=setup)
