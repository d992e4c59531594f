"""Server bootstrap: asyncio gRPC server with health, reflection, limits, keepalive,
the kernel interceptor (with the service's guards) and graceful shutdown on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.config import ConfigError, ServiceSettings
from llmesh.kernel.guards import Guard
from llmesh.kernel.health import HealthReporter
from llmesh.kernel.interceptors import DeadlinePolicy, KernelServerInterceptor
from llmesh.kernel.logging import get_logger, setup_logging
from llmesh.kernel.reflection import enable_reflection
from llmesh.kernel.telemetry import observe_event_loop, setup_telemetry

log = get_logger(__name__)

Setup = Callable[["ServiceHost"], AbstractAsyncContextManager[Any]]
Drain = Callable[[float], Awaitable[None]]


def server_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    """Channel arguments: message size limits and keepalive. gRPC takes requests up to
    twice ``max_message_bytes``, so that the kernel interceptor refuses those past the
    limit with a reason (MESSAGE_TOO_LARGE); gRPC cuts larger ones without details."""
    return [
        ("grpc.max_receive_message_length", 2 * settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS (mTLS with a client CA) credentials, or None for plaintext loopback."""
    tls = settings.tls
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    key = tls.key_file.read_bytes()
    cert = tls.cert_file.read_bytes()
    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class ServiceHost:
    """One service's gRPC server and its health, before and after it starts.

    Every call goes through one :class:`KernelServerInterceptor`, which runs ``guards``
    (service-specific checks such as authentication) after validation.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        service_names: Sequence[str],
        guards: Sequence[Guard] = (),
    ) -> None:
        self.settings = settings
        self.service_names = tuple(service_names)
        self.health = HealthReporter(self.service_names)
        # Set when the server starts to stop: endless streams (watches) end on it
        # (streams.until_closing), so that the drain waits only for finite calls.
        self.closing = asyncio.Event()
        deadlines = DeadlinePolicy(
            default_s=settings.default_deadline_s,
            max_s=settings.max_deadline_s,
            per_method=settings.method_deadlines,
        )
        self.server = grpc.aio.server(
            interceptors=[
                KernelServerInterceptor(
                    deadlines, guards, max_request_bytes=settings.max_message_bytes
                )
            ],
            options=server_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.server)
        self.port: int | None = None
        self.drain: Drain | None = None
        """Set by a service's wiring: on shutdown it runs (with the grace period's
        ``time.monotonic()`` deadline) before the server stops taking calls, while
        readiness is NOT_SERVING and liveness and every RPC still answer, so the
        service can refuse new work with its own status and finish what it has."""
        # Plaintext, health only: for probes that cannot speak TLS (kubelet's grpc probe).
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        if settings.health_port is not None:
            self.health_server = grpc.aio.server(options=server_options(settings))
            health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.health_server)

    async def start(self) -> int:
        """Bind and start; returns the bound port. Refuses non-loopback without TLS
        unless ``allow_plaintext`` is set."""
        creds = server_credentials(self.settings)
        if creds is None and not self.settings.loopback and not self.settings.allow_plaintext:
            raise ConfigError(
                f"refusing to listen on non-loopback host {self.settings.host!r} without TLS: "
                "set tls.cert_file and tls.key_file (env ..._TLS__CERT_FILE/_TLS__KEY_FILE), "
                "bind 127.0.0.1, or (a private dev network only) set allow_plaintext"
            )
        if self.settings.reflection:
            names = (
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            )
            enable_reflection(names, self.server)
        address = self.settings.address
        if creds is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, creds)
        if port == 0:
            raise ConfigError(f"port: cannot bind {address} (in use or not permitted)")
        await self.server.start()
        if self.health_server is not None:
            await self._start_health_server()
        await self.health.publish()
        self.port = port
        return port

    async def _start_health_server(self) -> None:
        assert self.health_server is not None
        address = f"{self.settings.host}:{self.settings.health_port}"
        try:
            health_port = self.health_server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises where older releases returned 0
            health_port = 0
        if health_port == 0:
            await self.server.stop(0)
            raise ConfigError(f"health_port: cannot bind {address} (in use or not permitted)")
        await self.health_server.start()
        self.health_port = health_port

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, reject new calls, let in-flight calls finish within ``grace_s``
        (after the service's ``drain``, if it has one, within the same grace period)."""
        grace = self.settings.grace_period_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        if self.drain is not None:
            await self.health.set_ready(False)
            await self.drain(deadline)
        await self.health.shutdown()
        self.closing.set()
        self.health.close_watches()
        await self.server.stop(max(0.0, deadline - time.monotonic()))
        if self.health_server is not None:
            await self.health_server.stop(0)


async def serve(
    settings: ServiceSettings,
    *,
    service_names: Sequence[str],
    setup: Setup,
    guards: Sequence[Guard] = (),
    stop_event: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop_event``), then drain and return."""
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if settings.metrics_port is not None:
        observe_event_loop(loop)
    host = ServiceHost(settings, service_names=service_names, guards=guards)
    async with setup(host):
        port = await host.start()
        log.info(
            "serving %s on %s:%d",
            ", ".join(service_names),
            settings.host,
            port,
            extra={"port": port, "tls": settings.tls.enabled},
        )
        await stop.wait()
        log.info("shutting down: NOT_SERVING, draining for up to %.1fs", settings.grace_period_s)
        await host.stop()
    log.info("stopped")


def run_service(
    settings: ServiceSettings,
    *,
    service: str,
    service_names: Sequence[str],
    setup: Setup,
    guards: Sequence[Guard] = (),
) -> int:
    """Process entry point for ``llmesh serve <service>``: logs, telemetry, serve, exit 0."""
    setup_logging(service, level=settings.log_level, fmt=settings.log_format, capture_uncaught=True)
    setup_telemetry(
        service,
        otlp_endpoint=settings.otlp_endpoint,
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        metrics_token_file=settings.metrics_token_file,
    )
    try:
        asyncio.run(serve(settings, service_names=service_names, setup=setup, guards=guards))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0
