"""Commands (embeddings, model loads) share the MLX thread with decoding: a backlog of
them must not starve running streams, and a command whose caller is gone is not run.

Found by the load suite (bench/load.py, issue 19): with 200 mixed clients the queued
Embed calls ran whole before each decode step, so streams got no token for 10 s at a
time and every generation waited out its deadline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from llmesh.v1 import common_pb2, inference_pb2

BLOCK_S = 0.15  # each command holds the MLX thread this long


def long_request() -> inference_pb2.InferenceServiceGenerateRequest:
    return inference_pb2.InferenceServiceGenerateRequest(
        input=common_pb2.GenerationInput(
            prompt="Tell me a long story",
            sampling=common_pb2.SamplingParams(max_tokens=1000, temperature=0),
        )
    )


async def test_a_command_backlog_does_not_stop_a_running_stream(start_worker: Any) -> None:
    async with start_worker(decode_delay_ms=5) as w:
        call = w.stub.Generate(long_request(), timeout=120)
        stream = call.__aiter__()
        await stream.__anext__()  # the stream is running
        engine = w.worker.engine
        steps_seen: list[int] = []

        def block() -> None:  # runs on the MLX thread: what decoding has done so far
            steps_seen.append(engine.decode_steps_total)
            time.sleep(BLOCK_S)

        await asyncio.gather(*(engine.call(block) for _ in range(12)))
        call.cancel()
    # Decoding went on between the commands (the old loop ran all that it found queued,
    # ~1.8 s here, before the next decode step: at most two distinct counts).
    assert len(set(steps_seen)) >= 6, steps_seen


async def test_a_command_whose_caller_is_gone_is_not_run(start_worker: Any) -> None:
    async with start_worker() as w:
        engine = w.worker.engine
        ran: list[str] = []
        blocker = asyncio.create_task(engine.call(lambda: time.sleep(0.5)))
        await asyncio.sleep(0.05)  # the thread is inside the blocker
        abandoned = asyncio.create_task(engine.call(lambda: ran.append("abandoned")))
        await asyncio.sleep(0)  # queued
        abandoned.cancel()  # as a deadline or a client cancel does
        await blocker
        await engine.call(lambda: ran.append("after"))
    assert ran == ["after"]
