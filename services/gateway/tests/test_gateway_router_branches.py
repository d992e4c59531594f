"""The gateway router over a scripted balancer and worker stubs, in process: when it
fails over and when it gives up (not retryable, attempts spent, too little time left),
empty deltas folded before the first token, and embeddings failing over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from llmesh.kernel.context import RequestContext, reset_request, set_request
from llmesh.kernel.errors import InvalidArgument, LlmeshError, NotFound, Unavailable
from llmesh.v1 import common_pb2, inference_pb2
from llmesh_gateway.balancer import RetryBudget
from llmesh_gateway.router import Router


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "x", "")


@dataclass
class Breaker:
    events: list[str]

    def success(self) -> None:
        self.events.append("success")

    def failure(self) -> None:
        self.events.append("failure")

    def release(self) -> None:
        self.events.append("release")


@dataclass
class Balancer:
    workers: list[str]
    events: list[str] = field(default_factory=list)

    def choose(self, model: str, *, exclude: set[str], session_id: str) -> common_pb2.WorkerInfo:
        for worker_id in self.workers:
            if worker_id not in exclude:
                return common_pb2.WorkerInfo(worker_id=worker_id, address=f"{worker_id}:1")
        raise Unavailable("no ready worker", reason="NO_READY_WORKER")

    def started(self, worker_id: str) -> None:
        self.events.append(f"started {worker_id}")

    def finished(self, worker_id: str) -> None:
        self.events.append(f"finished {worker_id}")

    def breaker(self, worker_id: str) -> Breaker:
        return Breaker(self.events)


@dataclass
class Pool:
    discarded: list[str] = field(default_factory=list)

    def discard(self, address: str) -> None:
        self.discarded.append(address)


class Call:
    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._run()

    async def _run(self) -> AsyncIterator[Any]:
        for item in self.script:
            if isinstance(item, BaseException):
                raise item
            yield item


class Stub:
    def __init__(self, generate: list[Any], embed: Any = None) -> None:
        self.generate, self.embed = generate, embed

    def Generate(self, request: Any, **kwargs: Any) -> Call:
        return Call(self.generate)

    async def Embed(self, request: Any, **kwargs: Any) -> Any:
        if isinstance(self.embed, BaseException):
            raise self.embed
        return self.embed


def _router(scripts: dict[str, Stub], **kwargs: Any) -> tuple[Router, Balancer, Pool]:
    balancer, pool = Balancer(list(scripts)), Pool()
    router = Router(balancer, pool, **kwargs)  # type: ignore[arg-type]
    router._stub = lambda worker: scripts[worker.worker_id]  # type: ignore[method-assign]
    return router, balancer, pool


def _start(model: str) -> inference_pb2.InferenceServiceGenerateResponse:
    return inference_pb2.InferenceServiceGenerateResponse(
        start=inference_pb2.InferenceServiceGenerateStart(model=model)
    )


def _delta(
    text: str = "", ids: tuple[int, ...] = ()
) -> inference_pb2.InferenceServiceGenerateResponse:
    return inference_pb2.InferenceServiceGenerateResponse(
        delta=common_pb2.GenerationDelta(text=text, token_ids=list(ids))
    )


REQUEST = inference_pb2.InferenceServiceGenerateRequest()


async def test_empty_deltas_before_the_first_token_are_folded_in() -> None:
    router, balancer, _ = _router(
        {"w1": Stub([_start("m"), _delta(), _delta("hi", (5,)), _delta()])}
    )
    chunks = [c async for c in router.stream(REQUEST)]
    assert [(c.worker_id, c.model, c.response.delta.text) for c in chunks] == [
        ("w1", "m", "hi"),
        ("w1", "m", ""),
    ]
    assert balancer.events == ["started w1", "finished w1", "success"]


async def test_a_stream_fails_over_until_a_worker_answers() -> None:
    router, balancer, pool = _router(
        {
            "w1": Stub([_error(grpc.StatusCode.UNAVAILABLE)]),
            "w2": Stub([_error(grpc.StatusCode.RESOURCE_EXHAUSTED)]),
            "w3": Stub([_delta("ok", (1,))]),
        }
    )
    chunks = [c async for c in router.stream(REQUEST)]
    assert [c.worker_id for c in chunks] == ["w3"]
    assert pool.discarded == ["w1:1"]  # only an unreachable worker's channel is dropped
    assert balancer.events == [
        "started w1",
        "finished w1",
        "failure",
        "started w2",
        "finished w2",
        "release",
        "started w3",
        "finished w3",
        "success",
    ]


async def test_a_client_fault_is_not_retried() -> None:
    router, balancer, _ = _router(
        {"w1": Stub([_error(grpc.StatusCode.INVALID_ARGUMENT)]), "w2": Stub([_delta("x")])}
    )
    with pytest.raises(InvalidArgument):
        async for _ in router.stream(REQUEST):
            pass
    assert balancer.events == ["started w1", "finished w1", "release"]
    with pytest.raises(InvalidArgument):
        await router.generate(REQUEST)


async def test_attempts_are_bounded() -> None:
    down = _error(grpc.StatusCode.UNAVAILABLE)
    router, balancer, _ = _router(
        {"w1": Stub([down]), "w2": Stub([down]), "w3": Stub([_delta("x")])}, max_attempts=2
    )
    with pytest.raises(Unavailable):
        await router.generate(REQUEST)
    assert [e for e in balancer.events if e.startswith("started")] == ["started w1", "started w2"]


async def test_no_retry_with_too_little_time_left() -> None:
    down = _error(grpc.StatusCode.UNAVAILABLE)
    router, balancer, _ = _router(
        {"w1": Stub([down]), "w2": Stub([_delta("x")])}, min_retry_time_s=5.0
    )

    class Tight(RequestContext):
        def remaining_s(self) -> float:
            return 1.0

    token = set_request(Tight("r", "/m"))
    try:
        with pytest.raises(Unavailable):
            async for _ in router.stream(REQUEST):
                pass
    finally:
        reset_request(token)
    assert [e for e in balancer.events if e.startswith("started")] == ["started w1"]


async def test_no_retry_once_the_budget_is_spent() -> None:
    down = _error(grpc.StatusCode.UNAVAILABLE)
    router, _, _ = _router(
        {"w1": Stub([down]), "w2": Stub([_delta("x")])},
        retry_budget=RetryBudget(ratio=0.0, reserve=0.0),
    )
    with pytest.raises(Unavailable):
        await router.generate(REQUEST)


async def test_when_every_worker_failed_the_last_error_is_raised() -> None:
    router, _, _ = _router({"w1": Stub([_error(grpc.StatusCode.INTERNAL)])})
    with pytest.raises(LlmeshError) as info:
        await router.generate(REQUEST)
    assert info.value.reason == "UPSTREAM_ERROR"


async def test_generate_collects_every_event() -> None:
    done = inference_pb2.InferenceServiceGenerateResponse(
        done=common_pb2.GenerationDone(
            finish_reason=common_pb2.FINISH_REASON_LENGTH,
            usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=2),
        )
    )
    router, _, _ = _router(
        {
            "w1": Stub(
                [
                    _start("m"),
                    _delta("a", (1,)),
                    inference_pb2.InferenceServiceGenerateResponse(),
                    _delta("b", (2,)),
                    done,
                ]
            )
        }
    )
    result = await router.generate(REQUEST)
    assert (result.worker_id, result.model, result.text, result.token_ids) == (
        "w1",
        "m",
        "ab",
        [1, 2],
    )
    assert result.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert result.usage.completion_tokens == 2


async def test_embeddings_fail_over_and_stop_on_a_client_fault() -> None:
    reply = inference_pb2.InferenceServiceEmbedResponse()
    router, balancer, _ = _router(
        {"w1": Stub([], _error(grpc.StatusCode.UNAVAILABLE)), "w2": Stub([], reply)}
    )
    assert await router.embed(inference_pb2.InferenceServiceEmbedRequest()) == ("w2", reply)
    assert "failure" in balancer.events and balancer.events[-1] == "success"
    router, _, _ = _router(
        {"w1": Stub([], _error(grpc.StatusCode.NOT_FOUND)), "w2": Stub([], reply)}
    )
    with pytest.raises(NotFound):
        await router.embed(inference_pb2.InferenceServiceEmbedRequest())
