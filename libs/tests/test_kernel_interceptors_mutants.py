"""The kernel interceptor driven in process with a recording servicer context (kills
interceptors.py's mutants and covers its branches: docs/quality.md). The same behaviour
over a real server is in test_kernel_server.py and test_kernel_guards.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from llmesh.kernel import interceptors
from llmesh.kernel.context import current_request
from llmesh.kernel.errors import DeadlineExceeded, InvalidArgument, NotFound, Unauthenticated
from llmesh.kernel.interceptors import (
    QUIET_PREFIXES,
    REQUEST_ID_KEY,
    STATUS_DETAILS_KEY,
    TRACE_ID_KEY,
    DeadlinePolicy,
    KernelServerInterceptor,
)
from llmesh.v1 import common_pb2, gateway_pb2

EMBED = "/llmesh.v1.GatewayService/Embed"
STREAM = "/llmesh.v1.GatewayService/GenerateStream"
HEALTH = "/grpc.health.v1.Health/Check"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
TRACEPARENT = f"00-{TRACE_ID:032x}-b7ad6b7169203331-01"
GOOD = gateway_pb2.EmbedRequest(texts=["hi"])


class AbortedCall(grpc.aio.AbortError):
    pass


class Context:
    """Records what the interceptor does to the call."""

    def __init__(
        self,
        metadata: Any = (),
        remaining: float | None = None,
        abort_error: BaseException | None = None,
    ) -> None:
        self.metadata = metadata
        self.remaining = remaining
        self.abort_error = abort_error
        self.trailers: Any = None
        self.aborted: tuple[grpc.StatusCode, str, Any] | None = None
        self.written: list[Any] = []

    def invocation_metadata(self) -> Any:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5123"

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers = metadata

    async def abort(self, code: grpc.StatusCode, message: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, message, trailing_metadata)
        raise self.abort_error or AbortedCall()

    async def write(self, item: Any) -> None:
        self.written.append(item)

    def status(self) -> status_pb2.Status:
        assert self.aborted is not None
        details = dict(self.aborted[2])[STATUS_DETAILS_KEY]
        return status_pb2.Status.FromString(details)


@dataclass
class Histogram:
    records: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def record(self, value: float, attributes: dict[str, str]) -> None:
        self.records.append((value, attributes))


@dataclass
class Guard:
    skip: str = "/nothing"
    error: Exception | None = None
    seen: list[tuple[str, Any, Any]] = field(default_factory=list)

    def applies(self, method: str) -> bool:
        return method != self.skip

    async def check(self, method: str, request: Any, context: Any) -> None:
        self.seen.append((method, request, context))
        if self.error is not None:
            raise self.error


@dataclass
class Details:
    method: str
    invocation_metadata: Any = ()


def _policy(**kwargs: Any) -> DeadlinePolicy:
    return DeadlinePolicy(
        default_s=kwargs.pop("default_s", 30.0), max_s=kwargs.pop("max_s", 300.0), **kwargs
    )


async def _wrapped(
    interceptor: KernelServerInterceptor, handler: grpc.RpcMethodHandler, method: str
) -> grpc.RpcMethodHandler:
    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        assert details.method == method
        return handler

    return await interceptor.intercept_service(continuation, Details(method))  # type: ignore[arg-type]


async def _never(request: Any, context: Any) -> Any:
    raise AssertionError("the handler must not run")


def _unary(behavior: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=gateway_pb2.EmbedRequest.FromString,
        response_serializer=gateway_pb2.EmbedResponse.SerializeToString,
    )


@pytest.fixture
def histogram(monkeypatch: pytest.MonkeyPatch) -> Histogram:
    hist = Histogram()

    class Meter:
        def create_histogram(self, name: str, **kwargs: Any) -> Histogram:
            assert name == "rpc.server.duration"
            assert kwargs == {
                "unit": "ms",
                "description": "Server-side RPC duration by method and status code",
            }
            return hist

    def fake_meter(name: str) -> Meter:
        assert name == "llmesh.rpc"
        return Meter()

    monkeypatch.setattr(interceptors, "meter", fake_meter)
    return hist


# --- helpers ----------------------------------------------------------------------------


def test_constants() -> None:
    assert REQUEST_ID_KEY == "x-request-id"
    assert TRACE_ID_KEY == "x-trace-id"
    assert STATUS_DETAILS_KEY == "grpc-status-details-bin"
    assert QUIET_PREFIXES == ("/grpc.health.v1.Health/", "/grpc.reflection.")


def test_deadline_policy() -> None:
    per_method = {EMBED: 5.0, "Chat": 7.0, "/x.S/Long": 900.0}
    policy = DeadlinePolicy(default_s=30.0, max_s=60.0, per_method=per_method)
    per_method[EMBED] = 1.0
    assert policy.per_method[EMBED] == 5.0
    assert policy.effective(EMBED, None) == 5.0
    assert policy.effective("/llmesh.v1.GatewayService/Chat", None) == 7.0
    assert policy.effective("/x.S/Long", None) == 60.0
    assert policy.effective("/x.S/Other", None) == 30.0
    assert policy.effective(EMBED, 2.0) == 2.0
    assert policy.effective(EMBED, 600.0) == 60.0
    assert DeadlinePolicy(default_s=3.0, max_s=9.0).effective(EMBED, None) == 3.0
    both = DeadlinePolicy(default_s=3.0, max_s=9.0, per_method={EMBED: 4.0, "Embed": 6.0})
    assert both.effective(EMBED, None) == 4.0


def test_delivered_counts_tokens_of_deltas_else_messages() -> None:
    event = gateway_pb2.GenerateStreamResponse(
        delta=common_pb2.GenerationDelta(token_ids=[1, 2, 3])
    )
    assert interceptors._delivered(event) == 3
    assert interceptors._delivered(gateway_pb2.GenerateStreamResponse()) == 0
    assert interceptors._delivered(object()) == 1
    assert interceptors._delivered(gateway_pb2.EmbedResponse()) == 1


def test_deadline_mid_stream() -> None:
    timeout = interceptors._deadline_mid_stream(TimeoutError(), "/m", 7)
    assert isinstance(timeout, DeadlineExceeded)
    assert timeout.message == "deadline exceeded: /m ran out of time after 7 tokens"
    assert timeout.metadata == {"tokens_delivered": "7"}
    assert timeout.reason == "DEADLINE_EXCEEDED"

    peer = DeadlineExceeded("peer ran out", reason="STATEMENT_TIMEOUT", metadata={"a": "b"})
    got = interceptors._deadline_mid_stream(peer, "/m", 4)
    assert isinstance(got, DeadlineExceeded) and got is not peer
    assert (got.message, got.reason) == ("peer ran out", "STATEMENT_TIMEOUT")
    assert got.metadata == {"a": "b", "tokens_delivered": "4"}

    counted = DeadlineExceeded("x", metadata={"tokens_delivered": "2"})
    assert interceptors._deadline_mid_stream(counted, "/m", 9) is counted
    other = NotFound("gone")
    assert interceptors._deadline_mid_stream(other, "/m", 9) is other
    plain = RuntimeError("x")
    assert interceptors._deadline_mid_stream(plain, "/m", 9) is plain


class _Span:
    def __init__(self, trace_id: int) -> None:
        self.trace_id = trace_id

    def get_span_context(self) -> Any:
        return self


def test_ids() -> None:
    ctx = interceptors.RequestContext(request_id="rid", method="/m")
    assert interceptors._ids(ctx, _Span(0)) == ((REQUEST_ID_KEY, "rid"),)  # type: ignore[arg-type]
    assert interceptors._ids(ctx, _Span(255)) == (  # type: ignore[arg-type]
        (REQUEST_ID_KEY, "rid"),
        (TRACE_ID_KEY, "0" * 30 + "ff"),
    )


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        (None, None),
        (10 * 365 * 24 * 3600 + 1, None),
        (10 * 365 * 24 * 3600, float(10 * 365 * 24 * 3600)),
        (2, 2.0),
        (0.0, 0.0),
    ],
)
def test_client_remaining(remaining: float | None, expected: float | None) -> None:
    got = interceptors._client_remaining(Context(remaining=remaining))  # type: ignore[arg-type]
    assert got == expected
    if expected is not None:
        assert isinstance(got, float)


def test_metrics_attributes_are_built_once_per_method_and_code(histogram: Histogram) -> None:
    metrics = interceptors._Metrics()
    metrics.record(EMBED, grpc.StatusCode.OK, 1.5)
    metrics.record(EMBED, grpc.StatusCode.OK, 2.5)
    metrics.record(EMBED, grpc.StatusCode.NOT_FOUND, 3.5)
    (v1, a1), (v2, a2), (v3, a3) = histogram.records
    assert (v1, v2, v3) == (1.5, 2.5, 3.5)
    assert a1 == {"rpc.method": EMBED, "rpc.grpc.status_code": "OK"}
    assert a1 is a2
    assert a3 == {"rpc.method": EMBED, "rpc.grpc.status_code": "NOT_FOUND"}


# --- handler wrapping -------------------------------------------------------------------


async def test_no_handler_is_passed_through() -> None:
    interceptor = KernelServerInterceptor(_policy())

    async def continuation(details: Any) -> None:
        return None

    assert await interceptor.intercept_service(continuation, Details(EMBED)) is None  # type: ignore[arg-type]


async def test_wrapped_handlers_are_cached_per_method_and_handler() -> None:
    interceptor = KernelServerInterceptor(_policy())

    async def behavior(request: Any, context: Any) -> Any:
        return gateway_pb2.EmbedResponse()

    handler = _unary(behavior)
    first = await _wrapped(interceptor, handler, EMBED)
    assert first is not handler
    assert await _wrapped(interceptor, handler, EMBED) is first
    other = _unary(behavior)
    replaced = await _wrapped(interceptor, other, EMBED)
    assert replaced is not first
    assert interceptor._handlers[EMBED] == (other, replaced)


async def test_wrapping_keeps_the_serializer_and_leaves_bytes_to_the_kernel() -> None:
    interceptor = KernelServerInterceptor(_policy())

    async def behavior(request: Any, context: Any) -> Any:
        return request

    unary = await _wrapped(interceptor, _unary(behavior), EMBED)
    assert unary.unary_unary is not None
    assert unary.request_deserializer is None
    assert unary.response_serializer is gateway_pb2.EmbedResponse.SerializeToString
    stream_handler = grpc.unary_stream_rpc_method_handler(
        behavior, response_serializer=gateway_pb2.GenerateStreamResponse.SerializeToString
    )
    stream = await _wrapped(interceptor, stream_handler, STREAM)
    assert stream.unary_stream is not None and stream.unary_unary is None
    assert stream.response_serializer is gateway_pb2.GenerateStreamResponse.SerializeToString
    bidi = grpc.stream_stream_rpc_method_handler(behavior)
    assert await _wrapped(interceptor, bidi, "/x.S/Bidi") is bidi


async def test_guards_run_only_for_the_methods_they_apply_to() -> None:
    guard = Guard(skip=HEALTH)
    interceptor = KernelServerInterceptor(_policy(), [guard])
    assert interceptor.guards == (guard,)

    async def behavior(request: Any, context: Any) -> Any:
        return gateway_pb2.EmbedResponse()

    health = await _wrapped(interceptor, _unary(behavior), HEALTH)
    await health.unary_unary(GOOD, Context())
    assert guard.seen == []
    embed = await _wrapped(interceptor, _unary(behavior), EMBED)
    context = Context()
    await embed.unary_unary(GOOD, context)
    assert guard.seen == [(EMBED, GOOD, context)]


# --- unary calls ------------------------------------------------------------------------


async def test_a_unary_call_runs_under_its_context(histogram: Histogram) -> None:
    guard = Guard()
    interceptor = KernelServerInterceptor(_policy(default_s=20.0), [guard])
    seen: dict[str, Any] = {}

    async def behavior(request: Any, context: Any) -> Any:
        ctx = current_request()
        assert ctx is not None
        seen.update(request=request, ctx=ctx, left=ctx.remaining_s(), context=context)
        return gateway_pb2.EmbedResponse(model="m")

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    context = Context(metadata=((REQUEST_ID_KEY, "req-1"), ("traceparent", TRACEPARENT)))
    reply = await handler.unary_unary(GOOD.SerializeToString(), context)
    assert reply == gateway_pb2.EmbedResponse(model="m")
    assert seen["request"] == GOOD
    assert seen["context"] is context
    assert seen["ctx"].request_id == "req-1"
    assert seen["ctx"].method == EMBED
    assert 15.0 < seen["left"] <= 20.0
    assert guard.seen == [(EMBED, GOOD, context)]
    assert context.trailers == ((REQUEST_ID_KEY, "req-1"), (TRACE_ID_KEY, f"{TRACE_ID:032x}"))
    assert context.aborted is None
    assert current_request() is None
    ((elapsed, attrs),) = histogram.records
    assert 0 <= elapsed < 60_000
    assert attrs == {"rpc.method": EMBED, "rpc.grpc.status_code": "OK"}


@pytest.mark.parametrize(
    ("metadata", "kept"),
    [
        (((REQUEST_ID_KEY, "x" * 128),), True),
        (((REQUEST_ID_KEY, "x"),), True),
        (((REQUEST_ID_KEY, "x" * 129),), False),
        (((REQUEST_ID_KEY, ""),), False),
        (((REQUEST_ID_KEY, b"bin"),), False),
        ((), False),
        (None, False),
    ],
)
async def test_a_request_id_is_kept_when_sane(metadata: Any, kept: bool) -> None:
    interceptor = KernelServerInterceptor(_policy())
    ids: list[str] = []

    async def behavior(request: Any, context: Any) -> Any:
        ctx = current_request()
        assert ctx is not None
        ids.append(ctx.request_id)
        return gateway_pb2.EmbedResponse()

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    context = Context(metadata=metadata)
    await handler.unary_unary(GOOD, context)
    if kept:
        assert ids == [dict(metadata)[REQUEST_ID_KEY]]
    else:
        assert len(ids[0]) == 32
        int(ids[0], 16)
    # The request id first; a trace id follows where a tracer provider was installed
    # (process-wide, by any earlier test that started a service in this process).
    assert context.trailers[0] == (REQUEST_ID_KEY, ids[0])
    assert [key for key, _ in context.trailers[1:]] in ([], [TRACE_ID_KEY])


async def test_the_client_deadline_is_capped_and_used() -> None:
    interceptor = KernelServerInterceptor(_policy(default_s=30.0, max_s=2.0))
    lefts: list[float] = []

    async def behavior(request: Any, context: Any) -> Any:
        ctx = current_request()
        assert ctx is not None and ctx.deadline is not None
        lefts.append(ctx.deadline - time.monotonic())
        return gateway_pb2.EmbedResponse()

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    await handler.unary_unary(GOOD, Context(remaining=1.0))
    await handler.unary_unary(GOOD, Context(remaining=100.0))
    await handler.unary_unary(GOOD, Context())
    assert 0.5 < lefts[0] <= 1.0
    assert 1.5 < lefts[1] <= 2.0
    assert 1.5 < lefts[2] <= 2.0


async def test_a_quiet_method_is_not_validated_logged_or_given_a_deadline(
    histogram: Histogram, caplog: pytest.LogCaptureFixture
) -> None:
    interceptor = KernelServerInterceptor(_policy(default_s=1.0))
    deadlines: list[float | None] = []

    async def behavior(request: Any, context: Any) -> Any:
        ctx = current_request()
        assert ctx is not None
        deadlines.append(ctx.deadline)
        return gateway_pb2.EmbedResponse()

    handler = await _wrapped(interceptor, _unary(behavior), HEALTH)
    context = Context()
    with caplog.at_level(logging.DEBUG, logger="llmesh.access"):
        # Invalid for EmbedRequest's rules (no texts), but health is not validated.
        await handler.unary_unary(gateway_pb2.EmbedRequest(), context)
        await handler.unary_unary(gateway_pb2.EmbedRequest(), Context(remaining=5.0))
    assert deadlines[0] is None
    assert deadlines[1] is not None
    assert context.trailers is None
    assert [r for r in caplog.records if r.name == "llmesh.access"] == []
    assert [a["rpc.grpc.status_code"] for _, a in histogram.records] == ["OK", "OK"]


async def test_an_invalid_request_is_refused_before_the_guard(
    histogram: Histogram, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard()
    interceptor = KernelServerInterceptor(_policy(), [guard])
    handler = await _wrapped(interceptor, _unary(_never), EMBED)
    context = Context(metadata=((REQUEST_ID_KEY, "r9"),))
    with caplog.at_level(logging.INFO, logger="llmesh.access"), pytest.raises(AbortedCall):
        await handler.unary_unary(gateway_pb2.EmbedRequest().SerializeToString(), context)
    assert guard.seen == []
    assert context.aborted is not None
    code, message, trailers = context.aborted
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    status = context.status()
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert message == status.message
    assert dict(trailers)[REQUEST_ID_KEY] == "r9"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "INVALID_FIELD"
    (record,) = [r for r in caplog.records if r.name == "llmesh.access"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"{EMBED} INVALID_ARGUMENT ")
    assert record.code == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert record.duration_ms >= 0  # type: ignore[attr-defined]
    assert histogram.records[0][1]["rpc.grpc.status_code"] == "INVALID_ARGUMENT"


async def test_malformed_bytes_are_invalid_argument() -> None:
    interceptor = KernelServerInterceptor(_policy())
    handler = await _wrapped(interceptor, _unary(_never), EMBED)
    context = Context()
    with pytest.raises(AbortedCall):
        await handler.unary_unary(b"\xff\xff\xff", context)
    info = error_details_pb2.ErrorInfo()
    assert context.status().details[0].Unpack(info)
    assert info.reason == "MALFORMED_REQUEST"


async def test_a_guard_refusal_is_mapped() -> None:
    guard = Guard(error=Unauthenticated("no key", reason="MISSING_CREDENTIALS"))
    interceptor = KernelServerInterceptor(_policy(), [guard])
    called: list[Any] = []

    async def behavior(request: Any, context: Any) -> Any:
        called.append(request)

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    context = Context()
    with pytest.raises(AbortedCall):
        await handler.unary_unary(GOOD, context)
    assert called == []
    assert context.aborted is not None
    assert context.aborted[:2] == (grpc.StatusCode.UNAUTHENTICATED, "no key")


async def _fail_with(exc: BaseException, context: Context | None = None) -> Context:
    interceptor = KernelServerInterceptor(_policy())

    async def behavior(request: Any, context: Any) -> Any:
        raise exc

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    context = context or Context(metadata=((REQUEST_ID_KEY, "rq"),))
    with pytest.raises(BaseException) as info:
        await handler.unary_unary(GOOD, context)
    context.raised = info.value  # type: ignore[attr-defined]
    return context


async def test_a_domain_error_becomes_its_status_with_details(
    histogram: Histogram, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="llmesh.access"):
        context = await _fail_with(NotFound("no model m", reason="MODEL_NOT_FOUND"))
    assert isinstance(context.raised, AbortedCall)  # type: ignore[attr-defined]
    assert context.aborted is not None
    assert context.aborted[:2] == (grpc.StatusCode.NOT_FOUND, "no model m")
    status = context.status()
    assert status == NotFound("no model m", reason="MODEL_NOT_FOUND").to_status()
    assert dict(context.aborted[2])[REQUEST_ID_KEY] == "rq"
    (record,) = [r for r in caplog.records if r.name == "llmesh.access"]
    assert record.levelno == logging.WARNING
    assert histogram.records[0][1]["rpc.grpc.status_code"] == "NOT_FOUND"


async def test_a_timeout_is_deadline_exceeded() -> None:
    context = await _fail_with(TimeoutError())
    assert context.aborted is not None
    assert context.aborted[:2] == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"deadline exceeded: {EMBED} ran out of time",
    )
    assert context.status().code == code_pb2.DEADLINE_EXCEEDED


async def test_the_own_deadline_passing_is_deadline_exceeded() -> None:
    interceptor = KernelServerInterceptor(_policy(default_s=0.05))

    async def behavior(request: Any, context: Any) -> Any:
        await asyncio.Event().wait()

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    context = Context()
    with pytest.raises(AbortedCall):
        await asyncio.wait_for(handler.unary_unary(GOOD, context), 60)
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_unexpected_error_is_internal_and_names_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        context = await _fail_with(RuntimeError("secret internals"))
    assert context.aborted is not None
    code, message, _ = context.aborted
    assert code == grpc.StatusCode.INTERNAL
    assert message == "internal error; quote request id rq when reporting it"
    assert "secret" not in message
    assert context.status().code == code_pb2.INTERNAL
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and errors[0].getMessage() == f"unhandled error in {EMBED}"
    assert errors[0].exc_info is not None


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), GeneratorExit()])
async def test_a_cancelled_call_is_not_aborted(
    exc: BaseException, histogram: Histogram, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="llmesh.access"):
        context = await _fail_with(exc)
    assert context.raised is exc  # type: ignore[attr-defined]
    assert context.aborted is None
    assert histogram.records[0][1]["rpc.grpc.status_code"] == "CANCELLED"
    (record,) = [r for r in caplog.records if r.name == "llmesh.access"]
    assert record.levelno == logging.INFO


async def test_a_handler_that_aborted_itself_is_not_aborted_again(histogram: Histogram) -> None:
    own = grpc.aio.AbortError()
    context = await _fail_with(own)
    assert context.raised is own  # type: ignore[attr-defined]
    assert context.aborted is None
    assert histogram.records[0][1]["rpc.grpc.status_code"] == "UNKNOWN"


async def test_an_abort_on_an_ended_call_keeps_the_original_error() -> None:
    error = NotFound("gone")
    context = await _fail_with(error, Context(abort_error=RuntimeError("rpc already ended")))
    assert context.raised is error  # type: ignore[attr-defined]
    assert context.aborted is not None


# --- server streams ---------------------------------------------------------------------


def _stream_handler(behavior: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_stream_rpc_method_handler(
        behavior,
        request_deserializer=gateway_pb2.EmbedRequest.FromString,
        response_serializer=gateway_pb2.GenerateStreamResponse.SerializeToString,
    )


def _delta(*ids: int) -> gateway_pb2.GenerateStreamResponse:
    return gateway_pb2.GenerateStreamResponse(delta=common_pb2.GenerationDelta(token_ids=list(ids)))


async def test_a_stream_is_written_and_closed(histogram: Histogram) -> None:
    interceptor = KernelServerInterceptor(_policy())
    closed: list[bool] = []

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        assert request == GOOD
        try:
            yield _delta(1, 2)
            yield _delta(3)
        finally:
            closed.append(current_request() is not None)

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    context = Context()
    await handler.unary_stream(GOOD.SerializeToString(), context)
    assert context.written == [_delta(1, 2), _delta(3)]
    assert closed == [True]
    assert context.aborted is None
    assert current_request() is None
    assert histogram.records[0][1] == {"rpc.method": STREAM, "rpc.grpc.status_code": "OK"}


async def test_a_stream_handler_that_writes_by_itself() -> None:
    interceptor = KernelServerInterceptor(_policy())

    async def behavior(request: Any, context: Any) -> None:
        await context.write(_delta(5))

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    context = Context()
    await handler.unary_stream(GOOD, context)
    assert context.written == [_delta(5)]


async def test_a_deadline_mid_stream_says_how_many_tokens_went_out() -> None:
    interceptor = KernelServerInterceptor(_policy())

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        yield _delta(1, 2, 3)
        yield gateway_pb2.GenerateStreamResponse()
        yield _delta(4)
        raise TimeoutError

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    context = Context()
    with pytest.raises(AbortedCall):
        await handler.unary_stream(GOOD, context)
    assert len(context.written) == 3
    assert context.aborted is not None
    code, message, _ = context.aborted
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert message == f"deadline exceeded: {STREAM} ran out of time after 4 tokens"
    info = error_details_pb2.ErrorInfo()
    assert context.status().details[0].Unpack(info)
    assert dict(info.metadata) == {"tokens_delivered": "4"}


async def test_a_deadline_before_the_first_message_says_no_tokens() -> None:
    interceptor = KernelServerInterceptor(_policy())

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        raise TimeoutError
        yield  # pragma: no cover

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    context = Context()
    with pytest.raises(AbortedCall):
        await handler.unary_stream(GOOD, context)
    assert context.aborted is not None
    assert context.aborted[1] == f"deadline exceeded: {STREAM} ran out of time"


async def test_a_stream_error_is_mapped_and_the_stream_closed(histogram: Histogram) -> None:
    interceptor = KernelServerInterceptor(_policy())
    closed: list[bool] = []

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            yield _delta(1)
            raise InvalidArgument("bad")
        finally:
            closed.append(True)

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    context = Context()
    with pytest.raises(AbortedCall):
        await handler.unary_stream(GOOD, context)
    assert context.aborted is not None
    assert context.aborted[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "bad")
    assert closed == [True]
    assert histogram.records[0][1]["rpc.grpc.status_code"] == "INVALID_ARGUMENT"


async def test_a_cancelled_stream_is_closed_in_its_own_task() -> None:
    interceptor = KernelServerInterceptor(_policy())
    closed: list[bool] = []
    started = asyncio.Event()

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            yield _delta(1)
            started.set()
            await asyncio.Event().wait()
            yield _delta(2)  # pragma: no cover
        finally:
            closed.append(current_request() is not None)

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    context = Context()
    task = asyncio.create_task(handler.unary_stream(GOOD, context))
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]
    assert context.aborted is None


# --- spans, durations, stream edges ------------------------------------------------------


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exporter.tracer = provider.get_tracer("test")  # type: ignore[attr-defined]
    return exporter


def _traced(spans: InMemorySpanExporter, **policy: Any) -> KernelServerInterceptor:
    interceptor = KernelServerInterceptor(_policy(**policy))
    interceptor.spans._tracer = spans.tracer  # type: ignore[attr-defined]
    return interceptor


async def _unary_span(spans: InMemorySpanExporter, exc: BaseException | None) -> Any:
    interceptor = _traced(spans)

    async def behavior(request: Any, context: Any) -> Any:
        if exc is not None:
            raise exc
        return gateway_pb2.EmbedResponse()

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    with contextlib.suppress(BaseException):
        await handler.unary_unary(GOOD, Context(metadata=((REQUEST_ID_KEY, "rq"),)))
    assert trace.get_current_span() is trace.INVALID_SPAN  # the span was detached
    (span,) = spans.get_finished_spans()
    return span


async def test_the_server_span_of_a_call(spans: InMemorySpanExporter) -> None:
    span = await _unary_span(spans, None)
    assert span.name == EMBED
    assert span.kind is SpanKind.SERVER
    assert span.attributes["net.peer.ip"] == "127.0.0.1"
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert span.status.status_code is StatusCode.UNSET


async def test_a_server_error_span_has_the_status_message_and_exception(
    spans: InMemorySpanExporter,
) -> None:
    span = await _unary_span(spans, RuntimeError("boom"))
    assert span.attributes["rpc.grpc.status_code"] == 13
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == (
        "INTERNAL: internal error; quote request id rq when reporting it"
    )
    assert [e.name for e in span.events] == ["exception"]


async def test_a_client_error_span_records_the_code_only(spans: InMemorySpanExporter) -> None:
    span = await _unary_span(spans, NotFound("gone"))
    assert span.attributes["rpc.grpc.status_code"] == 5
    assert span.status.status_code is StatusCode.UNSET
    assert list(span.events) == []


async def test_a_self_aborted_call_span_has_no_message(spans: InMemorySpanExporter) -> None:
    span = await _unary_span(spans, grpc.aio.AbortError())
    assert span.status.description == "UNKNOWN: "


async def _stream_span(spans: InMemorySpanExporter, items: list[Any]) -> Any:
    interceptor = _traced(spans)

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        for item in items:
            if isinstance(item, BaseException):
                raise item
            yield item

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    with contextlib.suppress(BaseException):
        await handler.unary_stream(GOOD, Context(metadata=((REQUEST_ID_KEY, "rq"),)))
    assert trace.get_current_span() is trace.INVALID_SPAN
    (span,) = spans.get_finished_spans()
    return span


async def test_stream_spans(spans: InMemorySpanExporter) -> None:
    ok = await _stream_span(spans, [_delta(1)])
    assert ok.name == STREAM and ok.status.status_code is StatusCode.UNSET
    spans.clear()
    failed = await _stream_span(spans, [_delta(1), RuntimeError("x")])
    assert failed.attributes["rpc.grpc.status_code"] == 13
    assert failed.status.description == (
        "INTERNAL: internal error; quote request id rq when reporting it"
    )
    assert [e.name for e in failed.events] == ["exception"]
    spans.clear()
    aborted = await _stream_span(spans, [grpc.aio.AbortError()])
    assert aborted.status.description == "UNKNOWN: "


async def test_durations_are_milliseconds(
    histogram: Histogram, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([1.0, 1.000123456])
    monkeypatch.setattr(
        interceptors,
        "time",
        SimpleNamespace(perf_counter=lambda: next(clock), monotonic=time.monotonic),
    )
    interceptor = KernelServerInterceptor(_policy())

    async def behavior(request: Any, context: Any) -> Any:
        return gateway_pb2.EmbedResponse()

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    with caplog.at_level(logging.INFO, logger="llmesh.access"):
        await handler.unary_unary(GOOD, Context())
    assert histogram.records[0][0] == pytest.approx(0.123456, abs=1e-9)
    (record,) = [r for r in caplog.records if r.name == "llmesh.access"]
    assert record.duration_ms == 0.123  # type: ignore[attr-defined]
    assert record.getMessage() == f"{EMBED} OK 0.1ms"


async def test_a_stream_has_the_call_deadline() -> None:
    interceptor = KernelServerInterceptor(_policy(default_s=0.05))

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield _delta(1)  # pragma: no cover

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    context = Context()
    with pytest.raises(AbortedCall):
        await asyncio.wait_for(handler.unary_stream(GOOD, context), 60)
    assert context.aborted is not None
    assert context.aborted[0] == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_stream_guard_sees_the_call_context() -> None:
    guard = Guard()
    interceptor = KernelServerInterceptor(_policy(), [guard])

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        yield _delta(1)

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    context = Context()
    await handler.unary_stream(GOOD, context)
    assert guard.seen == [(STREAM, GOOD, context)]


async def test_a_stream_whose_client_is_gone_is_closed_at_once() -> None:
    """A write that fails leaves the handler's generator at ``yield``: the interceptor
    closes it in the call's own task (its ``finally`` runs now, with the request context)."""
    interceptor = KernelServerInterceptor(_policy())
    closed: list[bool] = []

    async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            yield _delta(1)
            yield _delta(2)
        finally:
            closed.append(current_request() is not None)

    class Gone(Context):
        async def write(self, item: Any) -> None:
            raise ConnectionResetError("client gone")

    handler = await _wrapped(interceptor, _stream_handler(behavior), STREAM)
    with pytest.raises(AbortedCall):
        await handler.unary_stream(GOOD, Gone())
    assert closed == [True]


async def test_an_oversized_request_is_refused_with_its_size() -> None:
    interceptor = KernelServerInterceptor(_policy(), max_request_bytes=10)
    assert KernelServerInterceptor(_policy()).max_request_bytes is None
    seen: list[Any] = []

    async def behavior(request: Any, context: Any) -> Any:
        seen.append(request)
        return gateway_pb2.EmbedResponse()

    handler = await _wrapped(interceptor, _unary(behavior), EMBED)
    fits = gateway_pb2.EmbedRequest(texts=["abcdef"]).SerializeToString()
    assert len(fits) == 8
    await handler.unary_unary(fits, Context())
    exact = gateway_pb2.EmbedRequest(texts=["abcdefgh"]).SerializeToString()
    assert len(exact) == 10
    await handler.unary_unary(exact, Context())
    assert len(seen) == 2
    big = gateway_pb2.EmbedRequest(texts=["abcdefghi"]).SerializeToString()
    context = Context()
    with pytest.raises(AbortedCall):
        await handler.unary_unary(big, context)
    assert context.aborted is not None
    code, message, _ = context.aborted
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message == (
        "the request is 11 bytes, more than this server's limit of 10 (max_message_bytes); "
        "send a smaller one"
    )
    info = error_details_pb2.ErrorInfo()
    assert context.status().details[0].Unpack(info)
    assert info.reason == "MESSAGE_TOO_LARGE"
    assert dict(info.metadata) == {"limit_bytes": "10", "size_bytes": "11"}
    # An already parsed request (no raw bytes) is not measured here.
    await handler.unary_unary(gateway_pb2.EmbedRequest(texts=["x" * 50]), Context())
    assert len(seen) == 3
