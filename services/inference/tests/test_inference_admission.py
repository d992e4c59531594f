"""Cancel, deadline and queue overflow, proven with the Stats counters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, inference_pb2

LONG = 1000  # the test model decodes this many tokens in seconds, not milliseconds


def long_request(
    prompt: str = "Tell me a long story",
) -> inference_pb2.InferenceServiceGenerateRequest:
    return inference_pb2.InferenceServiceGenerateRequest(
        input=common_pb2.GenerationInput(
            prompt=prompt, sampling=common_pb2.SamplingParams(max_tokens=LONG, temperature=0)
        )
    )


async def assert_decoding_stopped(w: Any, cancelled: int) -> inference_pb2.StatsResponse:
    """Wait until the request is out; then no step and no token happens any more."""

    async def gone() -> Any:
        s = await w.stats()
        ok = s.requests_cancelled_total == cancelled and s.active_requests == 0
        return s if ok and s.queued_requests == 0 else None

    first: inference_pb2.StatsResponse = await await_until(
        gone, timeout_s=10, what="request removed"
    )
    # Two more observations, each after a round trip through the MLX thread.
    for _ in range(2):
        await w.worker.engine.call(lambda: None)
        later = await w.stats()
        assert later.tokens_generated_total == first.tokens_generated_total
        assert later.decode_steps_total == first.decode_steps_total
    assert first.tokens_generated_total < LONG
    return first


async def test_cancel_removes_the_request_within_one_step(start_worker: Any) -> None:
    async with start_worker() as w:
        call = w.stub.Generate(long_request(), timeout=60)
        received = 0
        async for chunk in call:
            received += len(chunk.delta.token_ids)
            if received >= 5:
                break
        running = await w.stats()
        assert running.active_requests == 1
        assert running.requests[0].completion_tokens >= 5
        call.cancel()
        stats = await assert_decoding_stopped(w, cancelled=1)
    # Tokens made after the client's cancel: at most the steps already under way.
    assert stats.tokens_generated_total - running.tokens_generated_total < 50
    assert stats.requests_completed_total == 0


async def test_deadline_removes_the_request(start_worker: Any) -> None:
    async with start_worker() as w:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in w.stub.Generate(long_request(), timeout=0.4):
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await assert_decoding_stopped(w, cancelled=1)


async def test_queue_overflow_is_resource_exhausted_with_retry_info(
    start_worker: Any, rpc_details: Callable[[grpc.aio.AioRpcError], dict[str, Any]]
) -> None:
    async with start_worker(max_batch_size=1, queue_capacity=1) as w:
        running = w.stub.Generate(long_request("first"), timeout=60)
        await running.read()
        queued = w.stub.Generate(long_request("second"), timeout=60)

        async def one_queued() -> bool:
            s = await w.stats()
            return bool(s.active_requests == 1 and s.queued_requests == 1)

        await await_until(one_queued, timeout_s=10, what="one running, one queued")
        stats = await w.stats()
        assert stats.free_slots == 0 and stats.queue_capacity == 1
        assert [r.queued for r in stats.requests] == [False, True]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in w.stub.Generate(long_request("third"), timeout=10):
                pass
        running.cancel()
        queued.cancel()
        await assert_decoding_stopped(w, cancelled=2)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = rpc_details(err.value)
    assert details["RetryInfo"].retry_delay.ToMilliseconds() > 0
    assert details["ErrorInfo"].reason == "QUEUE_FULL"
