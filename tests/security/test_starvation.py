"""A client that opens streams and never reads them cannot starve other tenants.

One tenant (globex) opens more generation streams than its principal may hold, asks each
for thousands of tokens and never reads a message: HTTP/2 flow control then stops every
write towards it. Meanwhile two other tenants go on working (Generate, a Chat turn,
Remember, Recall): every one of their calls must succeed, each within a bound far below
the attacker's deadline (a refusal with RetryInfo while the attacker holds every worker
slot is retried after its delay, as the docs tell clients to). The attacker's streams
beyond its concurrent-stream limit are refused (RESOURCE_EXHAUSTED, reason RATE_LIMITED).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
from e2etest.gateway_mesh import Mesh
from fuzz.report import record

from llmesh.kernel.upstream import peer_details
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc
from security.calls import bearer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ATTACK_STREAMS = 12  # more than a principal's 8 concurrent streams
ATTACK_DEADLINE_S = 240.0
VICTIM_BOUND_S = 30.0  # each victim call, on a loaded box; the attack lasts far longer
ROUNDS = 4
T = TypeVar("T")


async def _patiently(call: Callable[[float], Awaitable[T]]) -> T:
    """``call(timeout)`` as a client following the docs makes it: a refusal with
    RetryInfo (the worker's queue forecast, QUEUE_WAIT_TOO_LONG, while the attacker holds
    every slot) is retried after its delay, all within VICTIM_BOUND_S."""
    deadline = time.monotonic() + VICTIM_BOUND_S
    while True:
        try:
            return await call(max(0.1, deadline - time.monotonic()))
        except grpc.aio.AioRpcError as exc:
            delay = peer_details(exc).retry_after_s
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or delay is None:
                raise
            assert time.monotonic() + min(delay, 2.0) < deadline, f"starved: {exc.details()}"
            await asyncio.sleep(min(delay, 2.0))


async def _victim(stub: gateway_pb2_grpc.GatewayServiceStub, key: str, run: str) -> list[float]:
    meta = bearer(key)
    took: list[float] = []
    sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=4)

    async def chat(seconds: float) -> list[gateway_pb2.ChatResponse]:
        return [
            e
            async for e in stub.Chat(
                gateway_pb2.ChatRequest(session_id=f"v-{run}", message="hi", sampling=sampling),
                metadata=meta,
                timeout=seconds,
            )
        ]

    for n in range(ROUNDS):
        steps: list[Callable[[float], Awaitable[object]]] = [
            lambda timeout, n=n: stub.Generate(
                gateway_pb2.GenerateRequest(
                    input=common_pb2.GenerationInput(prompt=f"hello {n}", sampling=sampling)
                ),
                metadata=meta,
                timeout=timeout,
            ),
            lambda timeout, n=n: stub.Remember(
                gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text=f"fact {run} {n}")),
                metadata=meta,
                timeout=timeout,
            ),
            lambda timeout: stub.Recall(
                gateway_pb2.RecallRequest(query=f"fact {run}"),
                metadata=meta,
                timeout=timeout,
            ),
        ]
        for step in steps:
            started = time.monotonic()
            await _patiently(step)
            took.append(time.monotonic() - started)
        started = time.monotonic()
        events = await _patiently(chat)
        assert events[-1].WhichOneof("event") == "done"
        took.append(time.monotonic() - started)
    return took


async def _busy_slots(mesh: Mesh) -> int:
    """Requests the workers are running now (their own Stats)."""
    total = 0
    for worker in mesh.workers.values():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
            stats = await inference_pb2_grpc.InferenceServiceStub(channel).Stats(
                inference_pb2.StatsRequest(), timeout=10
            )
            total += stats.active_requests + stats.queued_requests
    return total


async def test_unread_streams_do_not_starve_other_tenants(security_mesh: Mesh) -> None:
    run = uuid.uuid4().hex[:6]
    # A receive window of 1 KiB and no window growth: the gateway's writes to the
    # attacker block after a few dozen tokens (the tiny model stops at ~510 tokens a
    # stream, which a default window would take whole).
    attacker_channel = grpc.aio.insecure_channel(
        security_mesh.gateway,
        options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)],
    )
    attacker = gateway_pb2_grpc.GatewayServiceStub(attacker_channel)
    streams = [
        attacker.GenerateStream(
            gateway_pb2.GenerateStreamRequest(
                input=common_pb2.GenerationInput(
                    prompt=f"tell me everything {i}",
                    sampling=common_pb2.SamplingParams(temperature=1.0, max_tokens=4096),
                )
            ),
            metadata=bearer(security_mesh.keys["bob"]),
            timeout=ATTACK_DEADLINE_S,
        )
        for i in range(ATTACK_STREAMS)
    ]
    try:
        # Let the attack take hold (its streams start and fill their windows) unread.
        await asyncio.sleep(0)
        refused = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = [s for s in streams if s.done()]
            if len(done) >= ATTACK_STREAMS - 8:
                break
            await asyncio.sleep(0.2)
        for stream in streams:
            if stream.done():
                code = await stream.code()
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code
                refused += 1
        assert refused == ATTACK_STREAMS - 8  # the principal's stream limit

        busy_before = await _busy_slots(security_mesh)
        async with grpc.aio.insecure_channel(security_mesh.gateway) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            started = time.monotonic()
            alice, dave = await asyncio.gather(
                _victim(stub, security_mesh.keys["alice"], f"a{run}"),
                _victim(stub, security_mesh.keys["dave"], f"d{run}"),
            )
            elapsed = time.monotonic() - started
        latencies = sorted(alice + dave)
        still_open = sum(1 for s in streams if not s.done())
        record(
            "starvation",
            {
                "attack_streams": ATTACK_STREAMS,
                "refused": refused,
                "unread_open_during_victims": still_open,
                "worker_requests_busy_at_start": busy_before,
                "victim_calls": len(latencies),
                "victim_p50_s": round(latencies[len(latencies) // 2], 3),
                "victim_max_s": round(latencies[-1], 3),
                "victims_elapsed_s": round(elapsed, 1),
            },
        )
        print(
            f"victims: {len(latencies)} calls, max {latencies[-1]:.2f}s, {elapsed:.1f}s; "
            f"worker requests busy when they started: {busy_before}"
        )
        assert still_open == 8  # the attack held on while the victims worked
        assert latencies[-1] < VICTIM_BOUND_S
        # The attacker goes away: its stream slots come back (a new stream is admitted).
        for stream in streams:
            stream.cancel()
        await attacker_channel.close(None)
        await _stream_admitted(security_mesh)
    finally:
        for stream in streams:
            stream.cancel()
        await attacker_channel.close(None)


async def _stream_admitted(mesh: Mesh) -> None:
    request = gateway_pb2.GenerateStreamRequest(
        input=common_pb2.GenerationInput(
            prompt="back", sampling=common_pb2.SamplingParams(max_tokens=2)
        )
    )
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        while True:
            try:
                async for _ in stub.GenerateStream(
                    request, metadata=bearer(mesh.keys["bob"]), timeout=30
                ):
                    pass
                return
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                assert time.monotonic() < deadline, "the attacker's stream slots never came back"
                await asyncio.sleep(0.5)
