"""Gateway e2e (shared mesh, see e2etest.gateway_mesh): a retried Chat turn appended once
and traced across three services, a cancel that reaches the worker, the llmesh CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import grpc
import pytest
from e2etest.gateway_mesh import LLMESH, Mesh, bearer, greedy

from llmesh.testing.polling import wait_until
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_chat_turn_appended_once_when_retried_and_traced(gateway_mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(gateway_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        meta = bearer(gateway_mesh.keys["carol"])
        await stub.Remember(
            gateway_pb2.RememberRequest(
                memory=common_pb2.MemoryDraft(text="carol prefers green tea")
            ),
            metadata=meta,
        )
        request = gateway_pb2.ChatRequest(
            session_id="retry-1",
            message="what tea do I like?",
            recall=common_pb2.RecallOptions(k=3),
            sampling=greedy(4),
        )
        first = [c async for c in stub.Chat(request, metadata=(*meta, ("x-request-id", "chat-1")))]
        assert first[0].start.memory_ids and first[-1].done.session_version == 1
        assert first[-1].done.usage.completion_tokens >= 1
        # The client did not see the answer and retries the very same turn (same
        # request id, as a transparent retry sends it): a replay, not a second turn.
        again = [c async for c in stub.Chat(request, metadata=(*meta, ("x-request-id", "chat-1")))]
        assert again[-1].done.session_version == 1 and again[-1].done.replayed
        assert again[-1].done.usage == first[-1].done.usage
        session = await stub.GetSession(
            gateway_pb2.GetSessionRequest(session_id="retry-1"), metadata=meta
        )
        assert session.session.version == 1 and len(session.messages) == 2

    # One trace: the gateway's Chat span, memory's spans (GetSession, Recall, Append) and
    # inference's spans (Generate, and Embed called by memory for the recall).
    def chat_trace() -> dict[str, set[str]] | None:
        spans = list(gateway_mesh.collector.spans)
        roots = [
            s for svc, s in spans if svc == "gateway" and s.name.endswith("GatewayService/Chat")
        ]
        for root in roots:
            names: dict[str, set[str]] = {}
            for service, span in spans:
                if span.trace_id == root.trace_id:
                    names.setdefault(service, set()).add(span.name)
            wanted = ("gateway", "memory", "inference")
            if (
                all(s in names for s in wanted)
                and all(any(rpc in n for n in names["inference"]) for rpc in ("Generate", "Embed"))
                and all(
                    any(rpc in n for n in names["memory"])
                    for rpc in ("GetSession", "Recall", "AppendMessages")
                )
            ):
                return names
        return None

    # Spans arrive from three processes in their own time: wait for the whole set.
    names = wait_until(chat_trace, timeout_s=15, what="a Chat trace across three services")
    assert names is not None


async def test_cancel_reaches_the_worker(gateway_mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(gateway_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for attempt in range(5):
            request_id = f"cancel-me-{attempt}"
            call = stub.GenerateStream(
                gateway_pb2.GenerateStreamRequest(
                    input=common_pb2.GenerationInput(
                        prompt=f"tell me a long story {attempt}",
                        sampling=common_pb2.SamplingParams(
                            temperature=1.0, seed=attempt, max_tokens=900
                        ),
                    )
                ),
                metadata=(*bearer(gateway_mesh.keys["alice"]), ("x-request-id", request_id)),
            )
            first: Any = await call.read()
            worker = gateway_mesh.workers[first.start.worker_id]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as wch:
                stats_stub = inference_pb2_grpc.InferenceServiceStub(wch)
                before = await stats_stub.Stats(inference_pb2.StatsRequest())
                if request_id not in [r.request_id for r in before.requests]:
                    call.cancel()
                    continue  # finished already (early EOS); try a longer one
                call.cancel()

                async def gone(stub: Any = stats_stub, rid: str = request_id) -> bool:
                    stats = await stub.Stats(inference_pb2.StatsRequest())
                    return rid not in [r.request_id for r in stats.requests]

                deadline = time.monotonic() + 5
                while not await gone():
                    assert time.monotonic() < deadline, "the worker kept the cancelled request"
                    await asyncio.sleep(0.02)
                after = await stats_stub.Stats(inference_pb2.StatsRequest())
                assert after.requests_cancelled_total > before.requests_cancelled_total
                return
        pytest.fail("no generation stayed active long enough to cancel")


def test_cli_generate_and_chat(gateway_mesh: Mesh) -> None:
    env = {
        **os.environ,
        "LLMESH_API_KEY": gateway_mesh.keys["carol"],
        "LLMESH_TARGET": gateway_mesh.gateway,
    }
    generated = subprocess.run(
        [*LLMESH, "generate", "--max-tokens", "4", "--temperature", "0", "--usage", "Hello"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert generated.returncode == 0, generated.stderr
    assert b"completion tokens" in generated.stderr
    chat = subprocess.run(
        [*LLMESH, "chat", "--session-id", "cli-1", "--max-tokens", "3", "--temperature", "0"],
        input=b"first message\nsecond message\n/session\n/quit\n",
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert chat.returncode == 0, chat.stderr
    assert b"user: first message" in chat.stdout and b"user: second message" in chat.stdout
    refused = subprocess.run(
        [*LLMESH, "generate", "x"],
        env={**env, "LLMESH_API_KEY": "lmk_0_bad"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and b"UNAUTHENTICATED" in refused.stderr
