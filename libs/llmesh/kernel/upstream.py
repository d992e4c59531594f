"""The one client side of every call a service makes to another service.

Channels (:mod:`llmesh.kernel.channels`) carry no interceptors: each call made through
this module gets, per call,

- the caller's remaining deadline minus a margin, or a bounded share of it where a
  call fans out (:func:`llmesh.kernel.context.outbound_timeout`, the one place
  deadlines are divided);
- a CLIENT span, its W3C ``traceparent`` and the request id in metadata (never in a
  message body);
- on failure, the peer's status turned into the domain error this service answers
  with, by one table (:func:`from_peer`; :func:`from_broken_stream` once a stream has
  delivered something).

Per-call options cost less than grpc.aio client interceptors (which wrap every call
in extra tasks and objects): see ``docs/performance.md``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from llmesh.kernel import errors
from llmesh.kernel.context import current_request, outbound_timeout
from llmesh.kernel.interceptors import REQUEST_ID_KEY, STATUS_DETAILS_KEY
from llmesh.kernel.logging import get_logger
from llmesh.kernel.reasons import ErrorReason

T = TypeVar("T")

log = get_logger(__name__)

_tracer = trace.get_tracer("llmesh.upstream")

# Seconds a retryable failure asks the caller to wait when the peer said nothing.
DEFAULT_RETRY_AFTER_S = 1.0

# A peer's client fault stays that fault for our caller (the peer's message and
# BadRequest say what to fix). Retryable codes carry RetryInfo; nothing else does.
_CLIENT_FAULTS: dict[grpc.StatusCode, type[errors.LlmeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.OUT_OF_RANGE: errors.OutOfRange,
}
_RETRYABLE: dict[grpc.StatusCode, type[errors.LlmeshError]] = {
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.ABORTED: errors.Aborted,
}
RETRYABLE_CODES = frozenset(_RETRYABLE)

# How a client-facing message names a peer (never by address), and the ErrorInfo reason
# of a peer that could not be reached or answered without a google.rpc.Status.
_PEERS: dict[str, tuple[str, ErrorReason]] = {
    "llmesh.v1.MemoryService": ("the memory service", ErrorReason.MEMORY_UNAVAILABLE),
    "llmesh.v1.InferenceService": ("the inference worker", ErrorReason.UPSTREAM_ERROR),
    "llmesh.v1.RegistryService": ("the registry", ErrorReason.UPSTREAM_ERROR),
    "llmesh.v1.GatewayService": ("the gateway", ErrorReason.UPSTREAM_ERROR),
    "llmesh.v1.AdminService": ("the gateway", ErrorReason.UPSTREAM_ERROR),
    "grpc.health.v1.Health": ("the peer service", ErrorReason.UPSTREAM_ERROR),
}
_UNKNOWN_PEER = ("a peer service", ErrorReason.UPSTREAM_ERROR)

# Network locations a peer's own message might hold (gRPC target syntax, host:port,
# IPv4/IPv6 literals, socket paths): replaced before the message reaches our caller.
_ADDRESS = re.compile(
    r"(?:\b(?:ipv4|ipv6|unix|unix-abstract|dns|vsock):\S+)"
    r"|(?:\[[0-9A-Fa-f:.]+\](?::\d+)?)"
    r"|(?:\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b)"
    r"|(?:\b[A-Za-z][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*:\d{2,5}\b)"
)


@dataclass(frozen=True)
class Share:
    """A branch of a fan-out: ``fraction`` of the remaining time, at most ``cap_s``."""

    fraction: float
    cap_s: float


def outbound_metadata() -> list[tuple[str, str]]:
    """Request id and trace context of the current request and span, as call metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    ctx = current_request()
    if ctx is not None:
        carrier[REQUEST_ID_KEY] = ctx.request_id
    return list(carrier.items())


class OutboundCall:
    """Timeout, metadata and CLIENT span of one call; :meth:`finish` ends the span.

    The span is not made current (it may outlive a stream's yields, which run in the
    consumer's context); its context goes to the peer in ``traceparent``.
    """

    __slots__ = ("metadata", "service", "span", "timeout")

    def __init__(
        self, name: str, *, timeout_s: float | None = None, share: Share | None = None
    ) -> None:
        if share is not None:
            cap = share.cap_s if timeout_s is None else min(share.cap_s, timeout_s)
            self.timeout = outbound_timeout(cap, share=share.fraction)
        else:
            self.timeout = outbound_timeout(timeout_s)
        service, _, method = name.rpartition("/")
        self.service = service
        self.span = _tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self.span))
        ctx = current_request()
        if ctx is not None:
            carrier[REQUEST_ID_KEY] = ctx.request_id
        self.metadata = list(carrier.items())

    def finish(self, code: grpc.StatusCode = grpc.StatusCode.OK) -> None:
        """End the span with the call's status code."""
        span = self.span
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()


def method_name(method: Any) -> str:
    """``package.Service/Method`` of a stub's multicallable (the span name)."""
    raw = getattr(method, "_method", b"")
    name = raw.decode() if isinstance(raw, bytes) else str(raw)
    return name.lstrip("/") or "grpc.call"


async def unary(
    method: Any,
    request: Any,
    *,
    what: str,
    timeout_s: float | None = None,
    share: Share | None = None,
    wait_for_ready: bool | None = None,
) -> Any:
    """Call a unary-unary stub method; a failure raises the translated domain error.

    ``what`` names the operation in client-facing messages ("reading the session"):
    never a peer address.
    """
    call = OutboundCall(method_name(method), timeout_s=timeout_s, share=share)
    code = grpc.StatusCode.OK
    try:
        return await method(
            request, timeout=call.timeout, metadata=call.metadata, wait_for_ready=wait_for_ready
        )
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        raise from_peer(exc, what=what, service=call.service) from None
    except BaseException:
        code = grpc.StatusCode.CANCELLED
        raise
    finally:
        call.finish(code)


async def server_stream(
    method: Any, request: Any, *, what: str, timeout_s: float | None = None
) -> AsyncIterator[Any]:
    """Iterate a unary-stream stub method; failures as in :func:`unary`, mid-stream ones
    by :func:`from_broken_stream` (counting the messages delivered)."""
    call = OutboundCall(method_name(method), timeout_s=timeout_s)
    stream = method(request, timeout=call.timeout, metadata=call.metadata)
    code = grpc.StatusCode.OK
    delivered = 0
    try:
        async for message in stream:
            delivered += 1
            yield message
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if delivered:
            raise from_broken_stream(exc, what=what, delivered=delivered) from None
        raise from_peer(exc, what=what, service=call.service) from None
    except BaseException:
        code = grpc.StatusCode.CANCELLED
        raise
    finally:
        stream.cancel()
        call.finish(code)


def status_details(exc: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a peer sent in its trailers, if any."""
    trailers: Any = exc.trailing_metadata() or ()
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:
                return None
            return status
    return None


@dataclass
class PeerDetails:
    """What a peer's ``google.rpc.Status`` said, unpacked (see :func:`peer_details`)."""

    sent: bool = False  # the peer's kernel sent a google.rpc.Status (not a transport error)
    reason: str = ""
    metadata: Mapping[str, str] | None = None
    retry_after_s: float | None = None
    fields: tuple[errors.FieldViolation, ...] = ()
    quotas: tuple[errors.QuotaViolation, ...] = ()


def peer_details(exc: grpc.aio.AioRpcError) -> PeerDetails:
    """ErrorInfo, RetryInfo, BadRequest and QuotaFailure of a peer's error, unpacked."""
    out = PeerDetails()
    status = status_details(exc)
    if status is None:
        return out
    out.sent = True
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.reason, out.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            out.retry_after_s = retry.retry_delay.ToMilliseconds() / 1000
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.fields = tuple(
                errors.FieldViolation(v.field, v.description, v.reason)
                for v in bad.field_violations
            )
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            out.quotas = tuple(
                errors.QuotaViolation(v.subject, v.description) for v in quota.violations
            )
    return out


def scrub(message: str) -> str:
    """``message`` with every network address in it replaced by ``<address>``."""
    return _ADDRESS.sub("<address>", message)


def peer_label(service: str) -> str:
    """How client-facing messages name the peer serving ``service`` (never an address)."""
    return _PEERS.get(service, _UNKNOWN_PEER)[0]


def from_peer(exc: grpc.aio.AioRpcError, *, what: str, service: str = "") -> errors.LlmeshError:
    """A peer's failure as the domain error we answer our caller with (the one table).

    ``service`` is the peer's full service name (``llmesh.v1.MemoryService``); it picks
    how messages name the peer and the reason of a failure the peer did not describe.

    - a peer's message is kept only when the peer's kernel sent it (with a
      ``google.rpc.Status``), with any network address in it replaced; transport errors
      (which name addresses) get ours, naming only ``what`` and the peer's role, and
      their text goes to the log;
    - every error carries a stable ErrorInfo reason: the peer's, else the code's
      (``INVALID_ARGUMENT`` ...); a peer that could not be reached (UNAVAILABLE without
      a status) is ``MEMORY_UNAVAILABLE`` for the memory service, ``UPSTREAM_ERROR``
      for any other;
    - client faults (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS,
      PERMISSION_DENIED, OUT_OF_RANGE) keep their code, message and details, never
      RetryInfo;
    - UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED keep their code and carry RetryInfo
      (the peer's delay, or a default);
    - DEADLINE_EXCEEDED and CANCELLED keep their code;
    - INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED and UNAUTHENTICATED (the peer's
      fault or ours, never the caller's) become UNAVAILABLE, reason UPSTREAM_ERROR,
      with a message naming only ``what``: the peer's text may hold internals.
    """
    code = exc.code()
    details = peer_details(exc)
    label, unreachable_reason = _PEERS.get(service, _UNKNOWN_PEER)
    if not details.sent and code not in (
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        # The transport's own text (addresses, ports, resolver errors) is for operators.
        log.warning(
            "%s: %s failed without a status (%s): %s",
            what,
            service or "a peer",
            code.name,
            exc.details(),
            extra={"peer_service": service, "grpc_code": code.name},
        )
    # A peer's own error message says what to fix; a transport error's names addresses.
    if details.sent and exc.details():
        message = scrub(exc.details() or "")
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"{what} failed: {label} could not be reached (UNAVAILABLE); retry later"
    else:
        message = f"{what} failed: {label} answered {code.name}"
    client = _CLIENT_FAULTS.get(code)
    if client is not None:
        return client(
            message,
            reason=details.reason,
            metadata=details.metadata,
            field_violations=details.fields,
        )
    retryable = _RETRYABLE.get(code)
    if retryable is not None:
        reason = details.reason
        if not reason and code == grpc.StatusCode.UNAVAILABLE:
            reason = unreachable_reason if not details.sent else ErrorReason.UPSTREAM_ERROR
        return retryable(
            message,
            reason=reason,
            metadata=details.metadata,
            retry_after_s=(
                details.retry_after_s
                if details.retry_after_s is not None
                else DEFAULT_RETRY_AFTER_S
            ),
            quota_violations=details.quotas,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(f"deadline exceeded while {what}")
    if code == grpc.StatusCode.CANCELLED:
        return errors.Cancelled(f"cancelled while {what}")
    return errors.Unavailable(
        f"{what} failed: {label} answered {code.name}",
        reason=ErrorReason.UPSTREAM_ERROR,
        retry_after_s=DEFAULT_RETRY_AFTER_S,
    )


def from_broken_stream(
    exc: grpc.aio.AioRpcError, *, what: str, delivered: int
) -> errors.LlmeshError:
    """A stream that failed after ``delivered`` units (tokens, messages) reached the caller.

    A deadline that passed mid-stream is DEADLINE_EXCEEDED (no RetryInfo: the same
    request would run out of time again); any other failure is UNAVAILABLE, reason
    STREAM_INTERRUPTED, with RetryInfo. Both carry ErrorInfo ``tokens_delivered``.
    """
    code = exc.code()
    metadata = {"tokens_delivered": str(delivered)}
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return deadline_mid_stream(what=what, delivered=delivered)
    if code == grpc.StatusCode.CANCELLED:
        return errors.Cancelled(f"cancelled while {what}", metadata=metadata)
    return errors.Unavailable(
        f"{what} broke after {delivered} tokens",
        reason="STREAM_INTERRUPTED",
        metadata=metadata,
        retry_after_s=0.5,
    )


def deadline_mid_stream(*, what: str, delivered: int) -> errors.DeadlineExceeded:
    """The error for a deadline that passed after ``delivered`` tokens were sent."""
    return errors.DeadlineExceeded(
        f"deadline exceeded while {what} after {delivered} tokens",
        metadata={"tokens_delivered": str(delivered)},
    )
