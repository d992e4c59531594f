"""The kernel's upstream client with fake stub methods, in process: per-call timeout and
metadata, the CLIENT span's status, stream failures before and after the first message,
and the peer's status details unpacked (branches the real-server tests in
test_kernel_upstream.py do not reach)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from llmesh.kernel import errors, upstream
from llmesh.kernel.context import RequestContext, reset_request, set_request
from llmesh.kernel.interceptors import REQUEST_ID_KEY, STATUS_DETAILS_KEY
from llmesh.kernel.upstream import (
    DEFAULT_RETRY_AFTER_S,
    OutboundCall,
    Share,
    from_broken_stream,
    from_peer,
    method_name,
    outbound_metadata,
    peer_details,
    server_stream,
    status_details,
    unary,
)

METHOD = "/llmesh.v1.MemoryService/Recall"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(upstream, "_tracer", provider.get_tracer("test"))
    return exporter


@pytest.fixture
def request_ctx() -> Any:
    token = set_request(RequestContext("req-7", "/m", deadline=None))
    yield
    reset_request(token)


def _error(code: grpc.StatusCode, details: str = "", trailers: Any = ()) -> grpc.aio.AioRpcError:
    metadata = grpc.aio.Metadata()
    for key, value in trailers:
        metadata.add(key, value)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), metadata, details, "")


def _status(*details: Any, message: str = "peer says") -> bytes:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return status_pb2.Status(code=5, message=message, details=packed).SerializeToString()


class UnaryMethod:
    _method = METHOD.encode()

    def __init__(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append({"request": request, **kwargs})
        if self.error is not None:
            raise self.error
        return self.result


class Stream:
    def __init__(self, items: list[Any], error: BaseException | None) -> None:
        self.items, self.error = items, error
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    async def _gen(self) -> AsyncIterator[Any]:
        for item in self.items:
            yield item
        if self.error is not None:
            raise self.error

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen()


class StreamMethod:
    _method = METHOD

    def __init__(self, items: list[Any], error: BaseException | None = None) -> None:
        self.stream = Stream(items, error)
        self.kwargs: dict[str, Any] = {}

    def __call__(self, request: Any, **kwargs: Any) -> Stream:
        self.kwargs = kwargs
        return self.stream


def test_method_name() -> None:
    assert method_name(UnaryMethod()) == "llmesh.v1.MemoryService/Recall"
    assert method_name(StreamMethod([])) == "llmesh.v1.MemoryService/Recall"
    assert method_name(object()) == "grpc.call"


def test_outbound_metadata_names_the_request(request_ctx: None) -> None:
    assert (REQUEST_ID_KEY, "req-7") in outbound_metadata()


def test_outbound_metadata_without_a_request() -> None:
    assert all(key != REQUEST_ID_KEY for key, _ in outbound_metadata())


def test_outbound_call_timeout_and_share(spans: InMemorySpanExporter) -> None:
    assert OutboundCall("s/M").timeout is None
    assert OutboundCall("s/M", timeout_s=4.0).timeout == 4.0
    assert OutboundCall("s/M", share=Share(0.5, 3.0)).timeout == 3.0
    assert OutboundCall("s/M", timeout_s=2.0, share=Share(0.5, 3.0)).timeout == 2.0
    call = OutboundCall("pkg.Svc/Do", timeout_s=1.0)
    assert call.service == "pkg.Svc"
    assert any(key == "traceparent" for key, _ in call.metadata)
    call.finish()
    (span,) = spans.get_finished_spans()
    assert span.name == "pkg.Svc/Do"
    assert span.attributes is not None
    assert span.attributes["rpc.service"] == "pkg.Svc"
    assert span.attributes["rpc.method"] == "Do"
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert span.status.status_code is not StatusCode.ERROR


def test_outbound_call_finish_marks_errors(spans: InMemorySpanExporter) -> None:
    OutboundCall("s/M").finish(grpc.StatusCode.NOT_FOUND)
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "NOT_FOUND"


async def test_unary_passes_timeout_metadata_and_wait_for_ready(
    spans: InMemorySpanExporter, request_ctx: None
) -> None:
    method = UnaryMethod(result="ok")
    assert await unary(method, "req", what="recalling", timeout_s=3.0, wait_for_ready=True) == "ok"
    (call,) = method.calls
    assert call["request"] == "req"
    assert call["timeout"] == 3.0
    assert call["wait_for_ready"] is True
    assert (REQUEST_ID_KEY, "req-7") in call["metadata"]
    assert spans.get_finished_spans()[0].attributes["rpc.grpc.status_code"] == 0  # type: ignore[index]


async def test_unary_translates_a_peer_error(spans: InMemorySpanExporter) -> None:
    method = UnaryMethod(error=_error(grpc.StatusCode.NOT_FOUND, "no such session"))
    with pytest.raises(errors.NotFound) as info:
        await unary(method, "req", what="reading the session")
    assert info.value.message == "reading the session failed: the memory service answered NOT_FOUND"
    assert info.value.__cause__ is None
    (span,) = spans.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]  # type: ignore[index]


async def test_unary_cancelled_is_recorded_and_raised(spans: InMemorySpanExporter) -> None:
    method = UnaryMethod(error=asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await unary(method, "req", what="x")
    (span,) = spans.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]  # type: ignore[index]


async def test_server_stream_yields_and_cancels_the_call(spans: InMemorySpanExporter) -> None:
    method = StreamMethod([1, 2, 3])
    got = [m async for m in server_stream(method, "req", what="x", timeout_s=5.0)]
    assert got == [1, 2, 3]
    assert method.kwargs["timeout"] == 5.0
    assert method.stream.cancelled
    assert spans.get_finished_spans()[0].attributes["rpc.grpc.status_code"] == 0  # type: ignore[index]


async def test_server_stream_failing_before_a_message_is_the_peer_error() -> None:
    method = StreamMethod([], _error(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    with pytest.raises(errors.InvalidArgument):
        async for _ in server_stream(method, "req", what="x"):
            pass
    assert method.stream.cancelled


async def test_server_stream_failing_mid_stream_counts_what_arrived() -> None:
    method = StreamMethod([1, 2], _error(grpc.StatusCode.UNAVAILABLE, "gone"))
    got: list[Any] = []
    with pytest.raises(errors.Unavailable) as info:
        async for item in server_stream(method, "req", what="streaming"):
            got.append(item)
    assert got == [1, 2]
    assert info.value.reason == "STREAM_INTERRUPTED"
    assert info.value.metadata == {"tokens_delivered": "2"}
    assert info.value.message == "streaming broke after 2 tokens"
    assert info.value.retry_after_s == 0.5


async def test_server_stream_closed_by_the_consumer(spans: InMemorySpanExporter) -> None:
    method = StreamMethod([1, 2, 3])
    stream = server_stream(method, "req", what="x")
    assert await stream.__anext__() == 1
    await stream.aclose()
    assert method.stream.cancelled
    (span,) = spans.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]  # type: ignore[index]


def test_status_details_finds_the_status_trailer() -> None:
    assert status_details(_error(grpc.StatusCode.INTERNAL)) is None
    assert status_details(_error(grpc.StatusCode.INTERNAL, trailers=[("other", "x")])) is None
    assert (
        status_details(_error(grpc.StatusCode.INTERNAL, trailers=[(STATUS_DETAILS_KEY, b"\xff")]))
        is None
    )
    found = status_details(
        _error(grpc.StatusCode.INTERNAL, trailers=[("a", "b"), (STATUS_DETAILS_KEY, _status())])
    )
    assert found is not None and found.message == "peer says"


def test_peer_details_unpacks_every_kind() -> None:
    delay = error_details_pb2.RetryInfo()
    delay.retry_delay.FromMilliseconds(2500)
    blob = _status(
        error_details_pb2.ErrorInfo(reason="MODEL_NOT_FOUND", metadata={"model": "m"}),
        delay,
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="a", description="b", reason="c")
            ]
        ),
        error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject="s", description="d")]
        ),
        error_details_pb2.DebugInfo(detail="ignored"),
    )
    details = peer_details(_error(grpc.StatusCode.NOT_FOUND, trailers=[(STATUS_DETAILS_KEY, blob)]))
    assert details.sent
    assert details.reason == "MODEL_NOT_FOUND"
    assert details.metadata == {"model": "m"}
    assert details.retry_after_s == 2.5
    assert details.fields == (errors.FieldViolation("a", "b", "c"),)
    assert details.quotas == (errors.QuotaViolation("s", "d"),)
    assert not peer_details(_error(grpc.StatusCode.NOT_FOUND)).sent


def test_a_peer_status_without_a_message_gets_ours() -> None:
    blob = _status(error_details_pb2.ErrorInfo(reason="QUEUE_FULL"), message="")
    err = from_peer(
        _error(grpc.StatusCode.RESOURCE_EXHAUSTED, "", trailers=[(STATUS_DETAILS_KEY, blob)]),
        what="generating",
        service="llmesh.v1.InferenceService",
    )
    assert isinstance(err, errors.ResourceExhausted)
    assert err.message == "generating failed: the inference worker answered RESOURCE_EXHAUSTED"
    assert err.reason == "QUEUE_FULL"
    assert err.retry_after_s == DEFAULT_RETRY_AFTER_S


def test_a_peer_unavailable_with_a_status_but_no_reason_is_upstream_error() -> None:
    blob = _status(message="draining")
    err = from_peer(
        _error(grpc.StatusCode.UNAVAILABLE, "draining", trailers=[(STATUS_DETAILS_KEY, blob)]),
        what="recalling",
        service="llmesh.v1.MemoryService",
    )
    assert isinstance(err, errors.Unavailable)
    assert err.reason == "UPSTREAM_ERROR"
    assert err.message == "draining"


def test_aborted_without_a_status_keeps_its_code_and_no_reason_of_its_own() -> None:
    err = from_peer(_error(grpc.StatusCode.ABORTED, "x"), what="appending")
    assert isinstance(err, errors.Aborted)
    assert err.reason == "ABORTED"
    assert err.message == "appending failed: a peer service answered ABORTED"


@pytest.mark.parametrize(
    ("code", "cls", "message"),
    [
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            errors.DeadlineExceeded,
            "deadline exceeded while x after 3 tokens",
        ),
        (grpc.StatusCode.CANCELLED, errors.Cancelled, "cancelled while x"),
        (grpc.StatusCode.INTERNAL, errors.Unavailable, "x broke after 3 tokens"),
    ],
)
def test_from_broken_stream(code: grpc.StatusCode, cls: type[Exception], message: str) -> None:
    err = from_broken_stream(_error(code), what="x", delivered=3)
    assert isinstance(err, cls)
    assert err.message == message  # type: ignore[attr-defined]
    assert err.metadata == {"tokens_delivered": "3"}  # type: ignore[attr-defined]
