"""Channels for calls between services.

Every call made through :func:`create_channel` carries the caller's remaining
deadline (minus a margin), its request id and W3C trace context, retries
``UNAVAILABLE`` on idempotent methods per the service config, and keeps the
connection alive. TLS (mTLS with a client certificate) when configured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from llmesh.kernel.config import ClientTlsSettings
from llmesh.kernel.context import current_request, outbound_timeout
from llmesh.kernel.interceptors import REQUEST_ID_KEY

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def service_config(*, non_idempotent: Sequence[tuple[str, str]] = (), max_attempts: int = 4) -> str:
    """gRPC service config: retry UNAVAILABLE everywhere but ``non_idempotent`` methods."""
    retry = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    configs: list[dict[str, Any]] = [{"name": [{}], "retryPolicy": retry}]
    if non_idempotent:
        configs.append(
            {"name": [{"service": service, "method": method} for service, method in non_idempotent]}
        )
    return json.dumps({"methodConfig": configs})


def _with_context(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    timeout = outbound_timeout(details.timeout)
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    ctx = current_request()
    if ctx is not None and REQUEST_ID_KEY not in metadata:
        metadata.add(REQUEST_ID_KEY, ctx.request_id)
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc,type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_context(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc,type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_context(details), request)


def channel_credentials(tls: ClientTlsSettings) -> grpc.ChannelCredentials:
    """Credentials trusting ``tls.ca_file``, presenting a client certificate if set."""
    root = tls.ca_file.read_bytes() if tls.ca_file else None
    key = tls.key_file.read_bytes() if tls.key_file else None
    cert = tls.cert_file.read_bytes() if tls.cert_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )


def create_channel(
    target: str,
    *,
    tls: ClientTlsSettings | None = None,
    non_idempotent: Sequence[tuple[str, str]] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive_time_s: float = 30.0,
) -> grpc.aio.Channel:
    """An aio channel to ``target`` (host:port) for calls made while serving a request."""
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(non_idempotent=non_idempotent)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if tls is not None and tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    interceptors = [_UnaryUnary(), _UnaryStream(), *aio_client_interceptors()]  # type: ignore[no-untyped-call]
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(
            target, channel_credentials(tls), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
