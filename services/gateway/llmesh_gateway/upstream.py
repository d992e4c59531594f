"""Calls to upstream services: status translation and the worker channel pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from llmesh.kernel import errors
from llmesh.kernel.channels import create_channel
from llmesh.kernel.config import ClientTlsSettings

T = TypeVar("T")

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ERRORS: dict[grpc.StatusCode, type[errors.LlmeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
}
# Codes a worker (not the request) is to blame for: they count against its breaker.
WORKER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Codes worth trying on another worker before anything was sent to the client.
RETRYABLE = WORKER_FAULTS | {grpc.StatusCode.RESOURCE_EXHAUSTED}


def status_details(exc: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` an upstream sent in its trailers, if any."""
    trailers: Any = exc.trailing_metadata() or ()
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:
                return None
            return status
    return None


def translate(exc: grpc.aio.AioRpcError, *, what: str) -> errors.LlmeshError:
    """An upstream failure as the domain error the gateway returns, details kept."""
    code = exc.code()
    cls = _ERRORS.get(code, errors.Unavailable)
    reason = ""
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    fields: list[errors.FieldViolation] = []
    quotas: list[errors.QuotaViolation] = []
    status = status_details(exc)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToMilliseconds() / 1000
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields = [
                    errors.FieldViolation(v.field, v.description) for v in bad.field_violations
                ]
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                quotas = [errors.QuotaViolation(v.subject, v.description) for v in quota.violations]
    if code not in _ERRORS:
        reason = "UPSTREAM_ERROR"
        message = f"{what} failed ({code.name})"
        retry_after = retry_after if retry_after is not None else 1.0
    else:
        message = exc.details() or f"{what} failed ({code.name})"
    if cls in (errors.Unavailable, errors.ResourceExhausted) and retry_after is None:
        retry_after = 1.0
    return cls(
        message,
        reason=reason,
        metadata=metadata,
        retry_after_s=retry_after,
        field_violations=fields,
        quota_violations=quotas,
    )


async def relay(call: Awaitable[T], *, what: str) -> T:
    """Await an upstream call, turning its failure into the matching domain error."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise translate(exc, what=what) from None


# Seconds calls on a discarded worker channel get to finish before it closes.
DISCARD_GRACE_S = 30.0


class ChannelPool:
    """One channel per worker address, reused across calls.

    Worker channels are the kernel's lean channels (no client interceptors): on this hot
    path (one streaming call per generation) grpc.aio's interceptor machinery costs more
    than the rest of the gateway together, so callers pass
    :func:`llmesh.kernel.channels.call_options` (deadline, request id, trace context)
    with each call. Failover is the gateway's job, so there are no channel retries.
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
                intercept=False,
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
