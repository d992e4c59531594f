"""Deadline-aware admission and the worker's drain (issue 19, findings 3 and 4), on a real
worker (in this process) whose decoding is paced by ``decode_delay_ms``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, inference_pb2
from llmesh_inference.forecast import ServiceRate, first_token_s, slot_heap, take_slot

Details = Callable[[grpc.aio.AioRpcError], dict[str, Any]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def request(max_tokens: int, prompt: str = "Tell me a story") -> Any:
    return inference_pb2.InferenceServiceGenerateRequest(
        input=common_pb2.GenerationInput(
            prompt=prompt,
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0),
        )
    )


async def collect(call: Any) -> int:
    """Tokens of a whole stream."""
    tokens = 0
    async for chunk in call:
        tokens += len(chunk.delta.token_ids)
    return tokens


async def first_tokens(call: Any) -> None:
    async for chunk in call:
        if chunk.delta.token_ids:
            return


# ----- the forecast ---------------------------------------------------------------------


def test_forecast_replays_the_queue_against_the_slots() -> None:
    rate = ServiceRate()
    assert rate.expected_tokens(100) == 100  # nothing measured: assume max_tokens
    rate.observe_finished(10, 100)  # stopped (EOS) at a tenth of what it was allowed
    assert rate.expected_tokens(100) == 10
    assert rate.expected_tokens(40) == 4
    assert rate.steps_left(100, 3) == 7
    assert rate.steps_left(100, 60) == 20  # past the expected: half of what may remain
    rate.observe_finished(40, 40)  # ran to its limit: the share moves up
    assert 10 < rate.expected_tokens(100) < 100
    heap = slot_heap(2, [5.0])  # one slot busy for 5 steps, one free
    assert take_slot(heap, 10) == 0  # the free slot
    assert take_slot(heap, 10) == 5  # then the busy one frees
    assert take_slot(heap, 10) == 10  # then the first queued one's
    assert first_token_s(4, 0.5) == 2.5


# ----- admission ------------------------------------------------------------------------


async def test_a_request_that_cannot_start_before_its_deadline_is_refused_at_once(
    start_worker: Any, rpc_details: Details
) -> None:
    async with start_worker(max_batch_size=1, queue_capacity=64, decode_delay_ms=20) as w:
        # Pace measured: 20+ ms a step, and a request runs ~100 tokens.
        assert await collect(w.stub.Generate(request(100), timeout=60)) == 100
        long = w.stub.Generate(request(1000), timeout=120)
        await first_tokens(long)  # the one slot is busy for ~100 steps (2+ s) now
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(w.stub.Generate(request(4, "second"), timeout=1))
        waited = time.monotonic() - started
        # The old worker queued it until its deadline: DEADLINE_EXCEEDED after 1 s.
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert waited < 1
        details = rpc_details(err.value)
        assert details["ErrorInfo"].reason == "QUEUE_WAIT_TOO_LONG"
        metadata = details["ErrorInfo"].metadata
        assert int(metadata["expected_wait_ms"]) > int(metadata["remaining_ms"])
        assert details["RetryInfo"].retry_delay.ToMilliseconds() > 0
        # A deadline the forecast fits is admitted and served.
        long.cancel()
        assert await collect(w.stub.Generate(request(4, "third"), timeout=120)) == 4


async def test_a_request_that_would_wait_and_then_be_cut_by_its_deadline_is_refused(
    start_worker: Any, rpc_details: Details
) -> None:
    async with start_worker(max_batch_size=1, queue_capacity=64, decode_delay_ms=20) as w:
        assert await collect(w.stub.Generate(request(50), timeout=60)) == 50  # pace measured
        running = w.stub.Generate(request(60), timeout=120)
        await first_tokens(running)  # the slot frees in ~60 steps (1.2 s+)
        # It could start before its deadline, but not finish 400 tokens (8 s+) by then:
        # waiting for the slot would only end in DEADLINE_EXCEEDED mid-stream.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(w.stub.Generate(request(400, "second"), timeout=4))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        metadata = rpc_details(err.value)["ErrorInfo"].metadata
        assert int(metadata["expected_end_ms"]) > int(metadata["remaining_ms"])
        assert await collect(running) > 0


async def test_a_queued_request_whose_forecast_slips_past_its_deadline_leaves_the_queue(
    start_worker: Any, rpc_details: Details
) -> None:
    async with start_worker(max_batch_size=1, queue_capacity=64, decode_delay_ms=20) as w:
        long = w.stub.Generate(request(1000), timeout=120)
        await first_tokens(long)
        queued = w.stub.Generate(request(4, "queued"), timeout=60)
        wait_task = asyncio.ensure_future(collect(queued))
        await await_until(
            lambda: _queued(w), timeout_s=30, what="the second request waits in the queue"
        )
        # The engine slows down (a slower machine, a bigger batch): the forecast of the
        # queued request's start is now far past its deadline.
        w.worker.engine.pace.step_s = 60.0
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await wait_task
        assert time.monotonic() - started < 50
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rpc_details(err.value)["ErrorInfo"].reason == "QUEUE_WAIT_TOO_LONG"
        stats = await w.stats()
        assert stats.queued_requests == 0 and stats.active_requests == 1  # never started
        long.cancel()


async def test_a_queued_request_whose_deadline_passes_is_dropped_not_started(
    start_worker: Any,
) -> None:
    async with start_worker(max_batch_size=1, queue_capacity=64, decode_delay_ms=20) as w:
        long = w.stub.Generate(request(1000), timeout=120)
        await first_tokens(long)
        before = await w.stats()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(w.stub.Generate(request(4, "late"), timeout=1.0))
        assert err.value.code() in (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        stats = await await_until(
            lambda: _without_queue(w), timeout_s=30, what="the queue to be empty"
        )
        assert stats.active_requests == 1  # the long one, alone: the late one never ran
        assert stats.requests_completed_total == before.requests_completed_total
        long.cancel()


async def _queued(w: Any) -> bool:
    return bool((await w.stats()).queued_requests == 1)


async def _without_queue(w: Any) -> Any:
    stats = await w.stats()
    return stats if stats.queued_requests == 0 else None


# ----- drain (SIGTERM) ------------------------------------------------------------------


async def test_drain_refuses_new_work_and_finishes_what_runs(
    start_worker: Any, rpc_details: Details
) -> None:
    async with start_worker(decode_delay_ms=20) as w:
        running = w.stub.Generate(request(60), timeout=120)
        await first_tokens(running)
        drain = asyncio.ensure_future(w.worker.drain(time.monotonic() + 60))
        await await_until(
            lambda: _status_is(w, "readiness", NOT_SERVING), timeout_s=10, what="not ready"
        )
        assert await w.health_status("liveness") == SERVING
        assert (await w.stats()).draining
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(w.stub.Generate(request(4, "new"), timeout=30))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_details(err.value)["ErrorInfo"].reason == "WORKER_DRAINING"
        rest = await collect(running)  # the running stream ends normally
        assert rest > 0
        await asyncio.wait_for(drain, 30)  # and the drain returns once it is done


async def test_drain_cuts_what_outlasts_the_grace_period_with_a_status_to_act_on(
    start_worker: Any, rpc_details: Details
) -> None:
    async with start_worker(decode_delay_ms=20, max_batch_size=1) as w:
        running = w.stub.Generate(request(5000), timeout=120)
        tokens = 0
        async for chunk in running:
            tokens += len(chunk.delta.token_ids)
            if tokens >= 3:
                break
        queued = w.stub.Generate(request(4, "queued"), timeout=120)
        queued_task = asyncio.ensure_future(collect(queued))
        await await_until(lambda: _queued(w), timeout_s=30, what="a queued request")
        await w.worker.drain(time.monotonic() + 2.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for chunk in running:
                tokens += len(chunk.delta.token_ids)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        info = rpc_details(err.value)["ErrorInfo"]
        assert info.reason == "STREAM_INTERRUPTED"
        assert int(info.metadata["tokens_delivered"]) >= tokens
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await queued_task
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_details(err.value)["ErrorInfo"].reason == "WORKER_DRAINING"


async def _status_is(w: Any, service: str, status: int) -> bool:
    return bool(await w.health_status(service) == status)
