"""Entry point of ``llmesh serve gateway``."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llmesh.kernel.cli import parse_service_args, service_parser
from llmesh.kernel.server import ServiceHost, run_service
from llmesh_gateway.settings import GatewaySettings


def build_parser() -> argparse.ArgumentParser:
    parser = service_parser(
        "gateway",
        "The public API: auth, rate limits, routing, chat "
        "(settings also from LLMESH_GATEWAY_* env).",
    )
    parser.add_argument("--registry", help="registry address (default 127.0.0.1:50052)")
    parser.add_argument("--memory", help="memory service address (default 127.0.0.1:50053)")
    parser.add_argument("--store-url", help="sqlite:///path or postgresql://... key store")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "registry_address": args.registry,
        "memory_address": args.memory,
        "store_url": args.store_url,
    }


def main(argv: Sequence[str]) -> int:
    """``llmesh serve gateway [flags]``; returns the exit code (2 for bad settings)."""
    settings, _ = parse_service_args(GatewaySettings, build_parser(), argv, extra=_overrides)

    from llmesh_gateway.auth import AuthGuard
    from llmesh_gateway.wiring import SERVICE_NAMES, wire

    auth = AuthGuard()

    @contextlib.asynccontextmanager
    async def setup(host: ServiceHost) -> AsyncIterator[None]:
        async with wire(host, settings, auth):
            yield

    return run_service(
        settings,
        service="gateway",
        service_names=list(SERVICE_NAMES),
        setup=setup,
        guards=[auth],
    )
