"""The kernel's server interceptor, the only one on every server: request id,
deadlines, the SERVER span, decoding, validation, the service's guards, error mapping,
RED metrics, access log.

This is the one place where domain errors become status codes. Per call, in order:
request context and span (parent from the caller's ``traceparent``), then the request
is parsed here (grpc hands over the raw bytes) and checked against its ``buf.validate``
rules, so malformed or invalid requests are refused, logged and counted before any
guard (``kernel.validation``); then the service's guards (:mod:`llmesh.kernel.guards`,
e.g. the gateway's authentication and rate limit), then the handler. One interceptor
instead of a stack (stream closer, OpenTelemetry, kernel, auth) saves a coroutine, a
handler lookup and OpenTelemetry's per-call wrappers on every call
(``docs/performance.md``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.trace import Span

from llmesh.kernel.context import RequestContext, reset_request, set_request
from llmesh.kernel.errors import DeadlineExceeded, LlmeshError, ResourceExhausted
from llmesh.kernel.guards import Guard
from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import meter
from llmesh.kernel.tracing import ServerSpans, method_attributes
from llmesh.kernel.validation import Deserializer, RequestValidator, decode

log = get_logger("llmesh.access")

REQUEST_ID_KEY = "x-request-id"
# The call's trace id (32 hex digits), in the trailers of every call that has one, so a
# client can quote it in a support ticket (docs/api.md).
TRACE_ID_KEY = "x-trace-id"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Methods never logged per call (probes would drown the log).
QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class DeadlinePolicy:
    """Default and maximum deadline per method (full name ``/pkg.Service/Method``)."""

    def __init__(
        self,
        *,
        default_s: float,
        max_s: float,
        per_method: Mapping[str, float] | None = None,
    ) -> None:
        self.default_s = default_s
        self.max_s = max_s
        self.per_method = dict(per_method or {})

    def effective(self, method: str, client_remaining: float | None) -> float:
        """Seconds the call may run: client's deadline or the default, capped."""
        if client_remaining is None:
            short = method.rsplit("/", 1)[-1]
            client_remaining = self.per_method.get(method, self.per_method.get(short))
            if client_remaining is None:
                client_remaining = self.default_s
        return min(client_remaining, self.max_s)


def _delivered(item: Any) -> int:
    """What one sent stream message delivered: its delta's tokens (generation events),
    else one message (as the upstream client counts a peer's stream)."""
    ids = getattr(getattr(item, "delta", None), "token_ids", None)
    return 1 if ids is None else len(ids)


def _deadline_mid_stream(exc: BaseException, method: str, delivered: int) -> BaseException:
    """A deadline that passed after part of a stream was sent (this server's own, or a
    peer's without the figure) says how much was: ErrorInfo ``tokens_delivered``."""
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(
            f"deadline exceeded: {method} ran out of time after {delivered} tokens",
            metadata={"tokens_delivered": str(delivered)},
        )
    if (
        isinstance(exc, LlmeshError)
        and exc.code is grpc.StatusCode.DEADLINE_EXCEEDED
        and "tokens_delivered" not in exc.metadata
    ):
        return DeadlineExceeded(
            exc.message,
            reason=exc.reason,
            metadata={**exc.metadata, "tokens_delivered": str(delivered)},
        )
    return exc


def _ids(ctx: RequestContext, span: Span) -> tuple[tuple[str, str], ...]:
    """The trailers that name the call: its request id and (when traced) its trace id."""
    trace_id = span.get_span_context().trace_id
    if not trace_id:
        return ((REQUEST_ID_KEY, ctx.request_id),)
    return ((REQUEST_ID_KEY, ctx.request_id), (TRACE_ID_KEY, format(trace_id, "032x")))


def _client_remaining(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    # grpc reports no deadline as None or as an enormous number.
    if remaining is None or remaining > 10 * 365 * 24 * 3600:
        return None
    return float(remaining)


class _Metrics:
    def __init__(self) -> None:
        m = meter("llmesh.rpc")
        self.duration = m.create_histogram(
            "rpc.server.duration",
            unit="ms",
            description="Server-side RPC duration by method and status code",
        )
        self._attrs: dict[tuple[str, grpc.StatusCode], dict[str, str]] = {}

    def record(self, method: str, code: grpc.StatusCode, elapsed_ms: float) -> None:
        attrs = self._attrs.get((method, code))
        if attrs is None:
            attrs = {"rpc.method": method, "rpc.grpc.status_code": code.name}
            self._attrs[(method, code)] = attrs
        # One histogram: its _count series is the request rate (R and E of RED), its
        # buckets the durations (D); a second counter would double the cost per call.
        self.duration.record(elapsed_ms, attrs)


@dataclass(frozen=True, slots=True)
class _Method:
    """What the interceptor knows about one method, worked out on its first call."""

    name: str  # /pkg.Service/Method
    decoder: Deserializer | None  # grpc's deserializer, run by the interceptor instead
    quiet: bool  # health and reflection: no validation, no access log, no default deadline
    guards: tuple[Guard, ...]  # the service's guards that apply to this method
    attributes: dict[str, Any]  # span attributes shared by every call


class KernelServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The one server interceptor: request id, deadline defaults/caps, SERVER span (parent
    from ``traceparent``), request decoding and contract validation, the service's
    guards, domain-error mapping, RED metrics, access log.

    Each method's handler is wrapped on its first call and reused. Server streams are
    served by a coroutine that writes each message with ``context.write``: grpc drops
    an async generator a cancelled client leaves at ``yield`` without closing it, and
    Python would close it later from a garbage-collection hook in another task and
    Context (``finally`` blocks there, context tokens that fail to reset, the call
    misreported); written this way, cancellation arrives in the call's own task, which
    closes the handler's stream.
    """

    def __init__(
        self,
        deadlines: DeadlinePolicy,
        guards: Sequence[Guard] = (),
        *,
        max_request_bytes: int | None = None,
    ) -> None:
        self.deadlines = deadlines
        self.guards = tuple(guards)
        # Larger requests are refused here, with a reason (the server lets gRPC take
        # up to twice this, so that they reach the interceptor at all).
        self.max_request_bytes = max_request_bytes
        self.metrics = _Metrics()
        self.spans = ServerSpans()
        self.validator = RequestValidator()
        # method -> (handler from the continuation, wrapped handler); bounded by the methods.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        call = _Method(
            name=method,
            decoder=handler.request_deserializer,
            quiet=method.startswith(QUIET_PREFIXES),
            guards=tuple(g for g in self.guards if g.applies(method)),
            attributes=method_attributes(method),
        )
        # grpc passes the raw bytes through (no deserializer): the wrapped behaviour
        # parses them, where a failure goes through the error mapping.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, call),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, call),
                response_serializer=handler.response_serializer,
            )
        return handler  # client/bidi streaming: no llmesh RPC uses them

    async def _admit(
        self, call: _Method, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """The parsed, validated request that passed every guard (raw bytes in)."""
        limit = self.max_request_bytes
        if limit is not None and isinstance(request, bytes) and len(request) > limit:
            raise ResourceExhausted(
                f"the request is {len(request)} bytes, more than this server's limit of "
                f"{limit} (max_message_bytes); send a smaller one",
                reason="MESSAGE_TOO_LARGE",
                metadata={"limit_bytes": str(limit), "size_bytes": str(len(request))},
            )
        if call.decoder is not None and isinstance(request, bytes):
            request = decode(call.decoder, request, method=call.name)
        if not call.quiet:
            self.validator.check(request)
        for guard in call.guards:
            await guard.check(call.name, request, context)
        return request

    def _begin(
        self, call: _Method, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[RequestContext, object, Span, object, float | None]:
        carrier: dict[str, Any] = {}
        for key, value in context.invocation_metadata() or ():
            carrier[key] = value
        request_id = carrier.get(REQUEST_ID_KEY)
        if not (isinstance(request_id, str) and 0 < len(request_id) <= 128):
            request_id = uuid.uuid4().hex
        client = _client_remaining(context)
        budget: float | None
        if client is None and call.quiet:
            budget = None  # health watches and reflection streams are long-lived
        else:
            budget = self.deadlines.effective(call.name, client)
        deadline = None if budget is None else time.monotonic() + budget
        ctx = RequestContext(request_id=request_id, method=call.name, deadline=deadline)
        span, span_token = self.spans.start(call.name, call.attributes, carrier, context.peer())
        if not call.quiet:
            context.set_trailing_metadata(_ids(ctx, span))
        return ctx, set_request(ctx), span, span_token, budget

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], call: _Method
    ) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            ctx, token, span, span_token, budget = self._begin(call, context)
            started = time.perf_counter()
            code, message, error = grpc.StatusCode.OK, "", None
            try:
                async with asyncio.timeout(budget):
                    return await behavior(await self._admit(call, request, context), context)
            except BaseException as exc:
                code, status, error = self._classify(exc, ctx)
                if status is not None:
                    message = status.message
                    await self._abort(context, code, status, ctx)
                raise
            finally:
                self._finish(call, ctx, code, started)
                self.spans.end(span, span_token, code, message, error)
                reset_request(token)

        return handle

    def _stream(
        self, behavior: Callable[..., Any], call: _Method
    ) -> Callable[..., Awaitable[None]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            ctx, token, span, span_token, budget = self._begin(call, context)
            started = time.perf_counter()
            code, message, error = grpc.StatusCode.OK, "", None
            stream = None
            sent = delivered = 0
            try:
                async with asyncio.timeout(budget):
                    result = behavior(await self._admit(call, request, context), context)
                    if inspect.isawaitable(result):  # a handler that writes by itself
                        await result
                    else:
                        stream = result.__aiter__()
                        async for item in stream:
                            await context.write(item)
                            sent += 1
                            delivered += _delivered(item)
            except BaseException as exc:
                if sent:
                    exc = _deadline_mid_stream(exc, ctx.method, delivered)
                code, status, error = self._classify(exc, ctx)
                if status is not None:
                    message = status.message
                    await self._abort(context, code, status, ctx)
                raise
            finally:
                try:
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()  # in this task, whatever ended the call
                finally:
                    self._finish(call, ctx, code, started)
                    self.spans.end(span, span_token, code, message, error)
                    reset_request(token)

        return handle

    def _classify(
        self, exc: BaseException, ctx: RequestContext
    ) -> tuple[grpc.StatusCode, status_pb2.Status | None, BaseException | None]:
        """The status code for ``exc``, the status to abort with (None: re-raise as is),
        and the error to record on the span (unexpected ones only)."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # the client went away
            return grpc.StatusCode.CANCELLED, None, None
        if isinstance(exc, grpc.aio.AbortError):
            return grpc.StatusCode.UNKNOWN, None, None  # the handler aborted by itself
        if isinstance(exc, LlmeshError):
            return exc.code, exc.to_status(), None
        if isinstance(exc, TimeoutError):
            return (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                status_pb2.Status(
                    code=code_pb2.DEADLINE_EXCEEDED,
                    message=f"deadline exceeded: {ctx.method} ran out of time",
                ),
                None,
            )
        log.error("unhandled error in %s", ctx.method, exc_info=exc)
        return (
            grpc.StatusCode.INTERNAL,
            status_pb2.Status(
                code=code_pb2.INTERNAL,
                message=f"internal error; quote request id {ctx.request_id} when reporting it",
            ),
            exc,
        )

    async def _abort(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        code: grpc.StatusCode,
        status: status_pb2.Status,
        ctx: RequestContext,
    ) -> None:
        """Abort with ``status`` in the trailers; raises ``grpc.aio.AbortError``."""
        trailers = (
            (STATUS_DETAILS_KEY, status.SerializeToString()),
            *_ids(ctx, trace.get_current_span()),
        )
        try:
            await context.abort(code, status.message, trailing_metadata=trailers)
        except grpc.aio.AbortError:
            raise
        except Exception:  # the RPC already ended (client gone): nothing to send
            return

    def _finish(
        self, call: _Method, ctx: RequestContext, code: grpc.StatusCode, started: float
    ) -> None:
        """RED metrics and the access-log line (while the call's span is still current)."""
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.metrics.record(call.name, code, elapsed_ms)
        if call.quiet:
            return
        level = 20 if code in {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED} else 30
        log.log(
            level,
            "%s %s %.1fms",
            call.name,
            code.name,
            elapsed_ms,
            extra={"code": code.name, "duration_ms": round(elapsed_ms, 3)},
        )
