"""The MLX thread and the worker's loops under supervision, on a real worker.

Faults are injected by overriding ``_step`` on the running engine instance: a step
that raises kills the MLX thread; a step that blocks stalls it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, inference_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def long_request() -> inference_pb2.InferenceServiceGenerateRequest:
    return inference_pb2.InferenceServiceGenerateRequest(
        input=common_pb2.GenerationInput(
            prompt="Tell me a long story",
            sampling=common_pb2.SamplingParams(max_tokens=1000, temperature=0),
        )
    )


async def _status_is(w: Any, service: str, status: int) -> bool:
    return bool(await w.health_status(service) == status)


async def test_a_dead_mlx_thread_fails_requests_fast_and_liveness(
    start_worker: Any,
    rpc_details: Callable[[grpc.aio.AioRpcError], dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with start_worker() as w:
        engine = w.worker.engine

        def exploding_step() -> None:
            raise RuntimeError("MLX exploded")

        engine._step = exploding_step
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in w.stub.Generate(long_request(), timeout=30):
                pass
        # Fails at once, not at its 30 s deadline, with a retryable status.
        assert time.monotonic() - started < 5
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        details = rpc_details(caught.value)
        assert "RetryInfo" in details
        assert "stopped after an internal error" in (caught.value.details() or "")
        await await_until(
            lambda: _status_is(w, "liveness", NOT_SERVING), timeout_s=5, what="liveness down"
        )
        assert "mlx" in w.worker.health.down
        # New work is refused immediately the same way.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as again:
            async for _ in w.stub.Generate(long_request(), timeout=30):
                pass
        assert again.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 2
    crash = [r for r in caplog.records if "background loop mlx crashed" in r.getMessage()]
    assert len(crash) == 1 and crash[0].exc_info is not None


async def test_a_stalled_mlx_thread_fails_liveness_until_it_progresses(start_worker: Any) -> None:
    async with start_worker(stall_timeout_s=0.3) as w:
        engine = w.worker.engine
        step = engine._step
        gate = threading.Event()

        def stuck_step() -> None:
            gate.wait(30)
            step()

        engine._step = stuck_step
        call = w.stub.Generate(long_request(), timeout=30)
        reader = asyncio.ensure_future(_drain(call))
        try:
            await await_until(
                lambda: _status_is(w, "liveness", NOT_SERVING), timeout_s=10, what="stall seen"
            )
            assert w.worker.health.down == ("mlx-stall",)
            assert await w.health_status("readiness") == SERVING  # it still claims readiness
            gate.set()
            await await_until(
                lambda: _status_is(w, "liveness", SERVING), timeout_s=10, what="progress seen"
            )
        finally:
            gate.set()
            call.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _drain(call: Any) -> None:
    async for _ in call:
        pass
