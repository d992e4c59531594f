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
from opentelemetry import propagate
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


def call_options() -> tuple[float | None, list[tuple[str, str]]]:
    """Timeout and metadata for a call made now on a lean channel (``intercept=False``).

    The caller's remaining deadline (minus the kernel's margin), its request id and
    the W3C trace context of the current span: what the interceptors of a full
    channel add, for hot paths that pass them per call instead.
    """
    metadata: dict[str, str] = {}
    propagate.inject(metadata)
    ctx = current_request()
    if ctx is not None:
        metadata[REQUEST_ID_KEY] = ctx.request_id
    return outbound_timeout(), list(metadata.items())


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
    intercept: bool = True,
    retries: bool = True,
) -> grpc.aio.Channel:
    """An aio channel to ``target`` (host:port) for calls made while serving a request.

    ``intercept=False`` gives a lean channel without client interceptors (grpc.aio's
    interceptor machinery costs ~0.2 ms per streamed call): pass :func:`call_options`
    with every call on it. ``retries=False`` for callers that fail over themselves.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if retries:
        options.append(("grpc.service_config", service_config(non_idempotent=non_idempotent)))
        options.append(("grpc.enable_retries", 1))
    else:
        options.append(("grpc.enable_retries", 0))
    if tls is not None and tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    interceptors: list[Any] = []
    if intercept:
        tracing = aio_client_interceptors()  # type: ignore[no-untyped-call]
        interceptors = [_UnaryUnary(), _UnaryStream(), *tracing]
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(
            target, channel_credentials(tls), options=options, interceptors=interceptors or None
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors or None)
