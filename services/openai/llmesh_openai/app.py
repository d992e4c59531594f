"""Entry point of ``llmesh serve openai``: the OpenAI-compatible HTTP door (uvicorn)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmesh.kernel.cli import parse_service_args, service_parser
from llmesh.kernel.config import ConfigError
from llmesh_openai.settings import OpenAISettings


def build_parser() -> argparse.ArgumentParser:
    parser = service_parser(
        "openai",
        "The OpenAI-compatible HTTP API in front of the gateway "
        "(settings also from LLMESH_OPENAI_* env).",
    )
    parser.add_argument("--gateway", help="gateway gRPC address (default 127.0.0.1:50051)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"gateway_address": args.gateway}


def bind(settings: OpenAISettings) -> socket.socket:
    """The listening socket (port 0: a free one); refuses non-loopback without TLS."""
    if not settings.tls.enabled and not settings.loopback and not settings.allow_plaintext:
        raise ConfigError(
            f"refusing to listen on non-loopback host {settings.host!r} without TLS: "
            "set tls.cert_file and tls.key_file (env LLMESH_OPENAI_TLS__CERT_FILE/"
            "_TLS__KEY_FILE), bind 127.0.0.1, or (a private dev network only) set "
            "allow_plaintext"
        )
    family = socket.AF_INET6 if ":" in settings.host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    # (a proto-0 socket keeps Nagle, which held each response's body ~40 ms behind its
    # headers until the client's delayed ACK: docs/performance.md).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host.strip("[]"), settings.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"port: cannot bind {settings.address} ({exc.strerror})") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def uvicorn_config(settings: OpenAISettings, app: Any) -> Any:
    import uvicorn

    tls = settings.tls
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        # Hardening: no `server: uvicorn` banner; h11 (not httptools, which has no header
        # limit) refuses a request whose header section exceeds max_header_bytes. Bodies
        # are bounded by max_message_bytes in the routes (413).
        server_header=False,
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=int(settings.grace_period_s),
        timeout_keep_alive=30,
        ssl_certfile=str(tls.cert_file) if tls.cert_file else None,
        ssl_keyfile=str(tls.key_file) if tls.key_file else None,
        ssl_ca_certs=str(tls.client_ca_file) if tls.client_ca_file else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca_file else ssl.CERT_NONE,
    )


@dataclass
class Running:
    """A door serving in this process (tests, benchmarks)."""

    port: int
    server: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serving(settings: OpenAISettings) -> AsyncIterator[Running]:
    """Serve the door in this event loop on ``settings``' port (0: a free one)."""
    import uvicorn

    from llmesh_openai.asgi import door

    sock = bind(settings)
    async with door(settings) as app:
        server = uvicorn.Server(uvicorn_config(settings, app))
        # _serve: without uvicorn's signal capture (the host process owns its signals).
        task = asyncio.create_task(server._serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            yield Running(port=int(sock.getsockname()[1]), server=server)
        finally:
            server.should_exit = True
            await task
            sock.close()


async def _serve(settings: OpenAISettings) -> None:
    import uvicorn

    from llmesh.kernel.logging import get_logger
    from llmesh_openai.asgi import door

    log = get_logger(__name__)
    sock = bind(settings)
    async with door(settings) as app:
        server = uvicorn.Server(uvicorn_config(settings, app))
        log.info(
            "serving the OpenAI API on %s:%d, gateway %s",
            settings.host,
            sock.getsockname()[1],
            settings.gateway_address,
            extra={"port": sock.getsockname()[1], "tls": settings.tls.enabled},
        )
        await server.serve(sockets=[sock])  # SIGTERM/SIGINT: drain for grace_period_s
    log.info("stopped")


def main(argv: Sequence[str]) -> int:
    """``llmesh serve openai [flags]``; returns the exit code (2 for bad settings)."""
    settings, _ = parse_service_args(OpenAISettings, build_parser(), argv, extra=_overrides)

    from llmesh.kernel.logging import get_logger, setup_logging
    from llmesh.kernel.telemetry import setup_telemetry

    setup_logging(
        "openai", level=settings.log_level, fmt=settings.log_format, capture_uncaught=True
    )
    setup_telemetry(
        "openai",
        otlp_endpoint=settings.otlp_endpoint,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        metrics_token_file=settings.metrics_token_file,
    )
    try:
        asyncio.run(_serve(settings))
    except ConfigError as exc:
        get_logger(__name__).error("%s", exc)
        return 2
    return 0
