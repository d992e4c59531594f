"""The kernel's server interceptor: request id, deadlines, decoding, validation,
error mapping, access log.

This is the one place where domain errors become status codes. Order on every
server: OpenTelemetry (outermost, so a span is active) -> this -> service
interceptors (e.g. the gateway's auth), which may raise domain errors. This
interceptor parses each request itself (grpc hands it the raw bytes) and checks the
``buf.validate`` rules, so malformed or invalid requests are refused, logged and
counted before authentication (``kernel.validation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2

from llmesh.kernel.context import RequestContext, reset_request, set_request
from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import meter
from llmesh.kernel.validation import Deserializer, RequestValidator, decode

log = get_logger("llmesh.access")

REQUEST_ID_KEY = "x-request-id"
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


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Base for server interceptors that wrap each method's behaviour once.

    Subclasses implement :meth:`wrap_unary` and :meth:`wrap_stream`; the wrapped
    handler is built on a method's first call and reused (per-call rebuilding costs
    time on every RPC). :meth:`passes` lets methods through untouched.
    """

    def __init__(self) -> None:
        # method -> (handler from the continuation, wrapped handler); bounded by the methods.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def passes(self, method: str) -> bool:
        """True for methods this interceptor leaves alone."""
        return False

    def wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str
    ) -> Callable[..., Awaitable[Any]]:
        raise NotImplementedError

    def wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str
    ) -> Callable[..., AsyncIterator[Any]]:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self.passes(method):
            return handler
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def deserializer(self, handler: grpc.RpcMethodHandler) -> Deserializer | None:
        """The deserializer grpc runs before the wrapped behaviour (default: the handler's)."""
        return handler.request_deserializer  # type: ignore[no-any-return]

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.wrap_unary(handler.unary_unary, method),
                request_deserializer=self.deserializer(handler),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self.wrap_stream(handler.unary_stream, method),  # type: ignore[arg-type]
                request_deserializer=self.deserializer(handler),
                response_serializer=handler.response_serializer,
            )
        return handler  # client/bidi streaming: no llmesh RPC uses them


class KernelServerInterceptor(WrappingInterceptor):
    """Request id, deadline defaults/caps, request decoding and contract validation,
    domain-error mapping, RED metrics, access log."""

    def __init__(self, deadlines: DeadlinePolicy) -> None:
        super().__init__()
        self.deadlines = deadlines
        self.metrics = _Metrics()
        self.validator = RequestValidator()
        # method -> the deserializer grpc would have run; this interceptor runs it.
        self._decoders: dict[str, Deserializer] = {}

    def deserializer(self, handler: grpc.RpcMethodHandler) -> Deserializer | None:
        # grpc passes the raw bytes through (None); ``_request`` parses them inside the
        # wrapped behaviour, where a failure goes through the error mapping below.
        return None

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.request_deserializer is not None:
            self._decoders[method] = handler.request_deserializer
        return super()._wrap(handler, method)

    def _request(self, method: str, request: Any) -> Any:
        """The parsed, validated request (raw bytes in, ``InvalidArgument`` on bad input)."""
        decoder = self._decoders.get(method)
        if decoder is not None and isinstance(request, bytes):
            request = decode(decoder, request, method=method)
        if not method.startswith(QUIET_PREFIXES):
            self.validator.check(request)
        return request

    def _begin(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[RequestContext, object, float | None]:
        request_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
                request_id = value
                break
        request_id = request_id or uuid.uuid4().hex
        client = _client_remaining(context)
        budget: float | None
        if client is None and method.startswith(QUIET_PREFIXES):
            budget = None  # health watches and reflection streams are long-lived
        else:
            budget = self.deadlines.effective(method, client)
        deadline = None if budget is None else time.monotonic() + budget
        ctx = RequestContext(request_id=request_id, method=method, deadline=deadline)
        return ctx, set_request(ctx), budget

    def wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str
    ) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            ctx, token, budget = self._begin(method, context)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                async with asyncio.timeout(budget):
                    return await behavior(self._request(method, request), context)
            except BaseException as exc:
                code, status = self._classify(exc, ctx)
                if status is not None:
                    await self._abort(context, code, status, ctx)
                raise
            finally:
                self._finish(method, ctx, code, started)
                reset_request(token)

        return handle

    def wrap_stream(
        self,
        behavior: Callable[..., AsyncIterator[Any]],
        method: str,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            ctx, token, _budget = self._begin(method, context)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            stream = None
            try:
                result: Any = behavior(self._request(method, request), context)
                stream = None if inspect.isawaitable(result) else result.__aiter__()
                if stream is None:  # a handler that writes with context.write()
                    async with asyncio.timeout(ctx.remaining_s()):
                        await result
                while stream is not None:
                    left = ctx.remaining_s()
                    if left is not None and left <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(left):
                        try:
                            item = await anext(stream)
                        except StopAsyncIteration:
                            break
                    yield item
            except BaseException as exc:
                code, status = self._classify(exc, ctx)
                if status is not None:
                    await self._abort(context, code, status, ctx)
                raise
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
                self._finish(method, ctx, code, started)
                # A stream grpc dropped unclosed is closed later by the garbage collector,
                # from another task and Context, where this token means nothing.
                with contextlib.suppress(ValueError):
                    reset_request(token)

        return handle

    def _classify(
        self, exc: BaseException, ctx: RequestContext
    ) -> tuple[grpc.StatusCode, status_pb2.Status | None]:
        """The status code for ``exc`` and the status to abort with (None: re-raise as is)."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # the client went away
            return grpc.StatusCode.CANCELLED, None
        if isinstance(exc, grpc.aio.AbortError):
            return grpc.StatusCode.UNKNOWN, None  # the handler aborted by itself
        if isinstance(exc, LlmeshError):
            return exc.code, exc.to_status()
        if isinstance(exc, TimeoutError):
            return grpc.StatusCode.DEADLINE_EXCEEDED, status_pb2.Status(
                code=code_pb2.DEADLINE_EXCEEDED,
                message=f"deadline exceeded: {ctx.method} ran out of time",
            )
        log.error("unhandled error in %s", ctx.method, exc_info=exc)
        return grpc.StatusCode.INTERNAL, status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"internal error; quote request id {ctx.request_id} when reporting it",
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
            (REQUEST_ID_KEY, ctx.request_id),
        )
        try:
            await context.abort(code, status.message, trailing_metadata=trailers)
        except grpc.aio.AbortError:
            raise
        except Exception:  # the RPC already ended (client gone): nothing to send
            return

    def _finish(
        self, method: str, ctx: RequestContext, code: grpc.StatusCode, started: float
    ) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.metrics.record(method, code, elapsed_ms)
        if method.startswith(QUIET_PREFIXES):
            return
        level = 20 if code in {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED} else 30
        log.log(
            level,
            "%s %s %.1fms",
            method,
            code.name,
            elapsed_ms,
            extra={"code": code.name, "duration_ms": round(elapsed_ms, 3)},
        )
