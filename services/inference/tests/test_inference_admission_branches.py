"""In-process tests of admission (admission.py) on an engine whose MLX thread is not
started: requests stay queued, so the queue-full refusal, the deadline forecast at
submit and the shedding of queued requests are checked exactly, without generation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from llmesh.kernel.errors import ResourceExhausted, Unavailable
from llmesh_inference.events import Failed, GenerationRequest
from llmesh_inference.sampling import SamplingOptions
from llmesh_inference.scheduler import Engine
from llmesh_inference.settings import InferenceSettings
from llmesh_inference.worker import InferenceWorker


def _engine(tmp_path: Path, **values: object) -> Engine:
    settings = InferenceSettings(port=0, models_dir=tmp_path, log_format="text", **values)
    engine = InferenceWorker(settings).engine
    assert isinstance(engine, Engine)
    return engine


def _req(max_tokens: int = 10, deadline_in: float | None = None) -> GenerationRequest:
    deadline = None if deadline_in is None else time.monotonic() + deadline_in
    return GenerationRequest(
        model="m", options=SamplingOptions(max_tokens=max_tokens), prompt="p", deadline=deadline
    )


async def test_queue_full_counts_free_batch_slots(tmp_path: Path) -> None:
    engine = _engine(tmp_path, max_batch_size=2, queue_capacity=1)
    for _ in range(3):  # one waiting + two that would take the free slots
        engine.submit(_req())
    with pytest.raises(ResourceExhausted) as info:
        engine.submit(_req())
    assert info.value.reason == "QUEUE_FULL"
    assert info.value.metadata == {"queue_capacity": "1"}
    assert 0.5 <= (info.value.retry_after_s or 0) <= 30
    assert engine.has_work()


async def test_stopping_and_failed_engines_refuse_work(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    engine._stopping = True
    with pytest.raises(Unavailable, match="shutting down"):
        engine.submit(_req())
    with pytest.raises(Unavailable, match="shutting down"):
        await engine.call(lambda: 1)
    engine.failure = RuntimeError("MLX thread died")
    with pytest.raises(Unavailable, match=r"stopped after an internal error \(MLX thread died\)"):
        engine.submit(_req())
    with pytest.raises(Unavailable, match="internal error"):
        await engine.call(lambda: 1)


async def test_unmeasured_pace_admits_everything(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    assert engine.pace.step_s == 0
    engine.submit(_req(deadline_in=0.001))  # no forecast yet: admitted
    engine._shed()  # nothing to shed without a pace
    assert len(engine._pending) == 1


async def test_a_request_that_cannot_start_in_time_is_refused_at_submit(tmp_path: Path) -> None:
    engine = _engine(tmp_path, max_batch_size=1)
    engine.pace.step_s = 0.5  # a measured pace: half a second per decode step
    engine.submit(_req(max_tokens=100))  # takes the one slot for ~100 steps
    with pytest.raises(ResourceExhausted) as info:
        engine.submit(_req(max_tokens=10, deadline_in=5.0))
    error = info.value
    assert error.reason == "QUEUE_WAIT_TOO_LONG"
    assert int(error.metadata["expected_wait_ms"]) > 5000
    assert error.metadata["queued_requests"] == "1"
    assert engine.requests_shed_total == 1
    # One that can start at once is admitted even when its end is past its deadline.
    fresh = _engine(tmp_path, max_batch_size=1)
    fresh.pace.step_s = 0.5
    fresh.submit(_req(max_tokens=1000, deadline_in=60.0))
    assert len(fresh._pending) == 1


async def test_queued_requests_past_their_forecast_are_shed(tmp_path: Path) -> None:
    engine = _engine(tmp_path, max_batch_size=1)
    first = engine.submit(_req(max_tokens=50))  # no deadline: never shed
    late = engine.submit(_req(max_tokens=10, deadline_in=30.0))
    cancelled = engine.submit(_req(max_tokens=10, deadline_in=30.0))
    engine.cancel(cancelled._active)
    kept = engine.submit(_req(max_tokens=10, deadline_in=3600.0))
    engine.pace.step_s = 1.0  # the pace turns out slow: ~50 s before a slot frees
    engine._shed()
    engine._flush()
    event = await asyncio.wait_for(late.next_event(), 60)
    assert isinstance(event, Failed) and event.error.reason == "QUEUE_WAIT_TOO_LONG"
    pending = [a.req.request_id for a in engine._pending]
    assert pending == [
        first.request_id,
        cancelled.request_id,  # a cancelled one leaves when the thread sees it
        kept.request_id,
    ]
    assert engine.requests_shed_total == 1
    assert late.drain() == []
    engine._shed()  # again: nothing more to shed
    assert len(engine._pending) == 3
