"""Entry point of ``llmesh serve gateway``."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence

from llmesh.kernel.config import ConfigError, load_settings
from llmesh.kernel.server import ServiceHost, run_service
from llmesh_gateway.settings import GatewaySettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmesh serve gateway",
        description="The public API: auth, rate limits, routing, chat "
        "(settings also from LLMESH_GATEWAY_* env).",
    )
    parser.add_argument("--config", help="YAML/JSON settings file")
    parser.add_argument("--host", help="bind address (default 127.0.0.1; others need TLS)")
    parser.add_argument("--port", type=int, help="gRPC port (default 50051)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (e.g. 9461)")
    parser.add_argument("--data-dir", help="directory for the key store (default ~/.llmesh)")
    parser.add_argument("--registry", help="registry address (default 127.0.0.1:50052)")
    parser.add_argument("--memory", help="memory service address (default 127.0.0.1:50053)")
    parser.add_argument("--store-url", help="sqlite:///path or postgresql://... key store")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def main(argv: Sequence[str]) -> int:
    """``llmesh serve gateway [flags]``; returns the exit code."""
    args = build_parser().parse_args(list(argv))
    try:
        settings = load_settings(
            GatewaySettings,
            config_file=args.config,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            data_dir=args.data_dir,
            registry_address=args.registry,
            memory_address=args.memory,
            store_url=args.store_url,
            log_level=args.log_level,
        )
    except ConfigError as exc:
        print(f"llmesh serve gateway: {exc}")
        return 2

    from llmesh_gateway.auth import AuthInterceptor
    from llmesh_gateway.service import SERVICE_NAMES, gateway_service

    auth = AuthInterceptor()

    @contextlib.asynccontextmanager
    async def setup(host: ServiceHost) -> AsyncIterator[None]:
        async with gateway_service(host, settings, auth):
            yield

    return run_service(
        settings,
        service="gateway",
        service_names=list(SERVICE_NAMES),
        setup=setup,
        interceptors=[auth],
    )
