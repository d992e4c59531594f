"""Channels for calls between services.

A channel from :func:`create_channel` retries ``UNAVAILABLE`` on idempotent methods
per the service config, keeps the connection alive, and speaks TLS (mTLS with a
client certificate) when configured. It has no client interceptors: calls go
through :mod:`llmesh.kernel.upstream`, which passes the remaining deadline, request
id and trace context per call and translates the peer's errors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import grpc

from llmesh.kernel.config import ClientTlsSettings

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
    retries: bool = True,
    max_reconnect_backoff_s: float | None = None,
) -> grpc.aio.Channel:
    """An aio channel to ``target`` (host:port); call it through :mod:`llmesh.kernel.upstream`.

    ``retries=False`` for callers that fail over themselves. ``max_reconnect_backoff_s``
    caps gRPC's reconnect backoff (default: up to 2 minutes) for callers that must find
    a restarted peer within seconds (a registrar its registry).
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
    if max_reconnect_backoff_s is not None:
        backoff_ms = int(max_reconnect_backoff_s * 1000)
        options.append(("grpc.max_reconnect_backoff_ms", backoff_ms))
        options.append(("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)))
    if tls is not None and tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(target, channel_credentials(tls), options=options)
    return grpc.aio.insecure_channel(target, options=options)


# Seconds calls on a discarded worker channel get to finish before it closes.
DISCARD_GRACE_S = 30.0


class ChannelPool:
    """One channel per peer address, reused across calls (workers, embedders).

    Calls on them go through :mod:`llmesh.kernel.upstream`. Failover is the caller's
    job (it chooses another peer), so there are no channel retries.
    """

    def __init__(
        self, *, tls: ClientTlsSettings | None = None, max_message_bytes: int = 8 << 20
    ) -> None:
        self._tls = tls
        self._max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = create_channel(
                address,
                tls=self._tls,
                max_message_bytes=self._max_message_bytes,
                retries=False,
            )
            self._channels[address] = channel
        return channel

    def discard(self, address: str) -> None:
        """Forget the channel to ``address`` after a connection failure.

        A gRPC channel that failed to connect waits out an exponential reconnect
        backoff (up to minutes) before trying again, even once the registry reports
        the worker READY again; the next call gets a fresh channel that connects at
        once. Calls still running on the old channel get a grace period to finish.
        """
        channel = self._channels.pop(address, None)
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close(DISCARD_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
