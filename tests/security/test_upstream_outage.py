"""A service the gateway cannot reach (issue 19, finding 7): with the memory service
stopped, every gateway RPC that needs it answers UNAVAILABLE with a stable ErrorInfo
reason (MEMORY_UNAVAILABLE) and RetryInfo, and no message names an address, a port or
the transport's own text ("failed to connect to all addresses; ... ipv4:127.0.0.1:...");
that text goes to the gateway's log only. Real services in this process (fuzz.harness).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import grpc
import pytest
from fuzz.harness import mesh

from llmesh.testing.rpc import error_details
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ADDRESSY = re.compile(r"\d+\.\d+\.\d+\.\d+|ipv[46]:|:\d{2,5}\b|localhost|connect|refused|socket")


async def test_memory_down_is_memory_unavailable_without_addresses(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with mesh(tmp_path, tiny_model_dir) as running:
        memory_port = str(running.hosts["memory"].port)
        await running.hosts["memory"].stop(0)
        meta = (("authorization", f"Bearer {running.admin_key}"),)
        async with grpc.aio.insecure_channel(running.addresses["gateway"]) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            calls = {
                "Remember": lambda: stub.Remember(
                    gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text="x")),
                    metadata=meta,
                    timeout=20,
                ),
                "Recall": lambda: stub.Recall(
                    gateway_pb2.RecallRequest(query="x"), metadata=meta, timeout=20
                ),
                "Forget": lambda: stub.Forget(
                    gateway_pb2.ForgetRequest(ids=["m1"]), metadata=meta, timeout=20
                ),
                "GetSession": lambda: stub.GetSession(
                    gateway_pb2.GetSessionRequest(session_id="s"), metadata=meta, timeout=20
                ),
                "ListSessions": lambda: stub.ListSessions(
                    gateway_pb2.ListSessionsRequest(), metadata=meta, timeout=20
                ),
                "DeleteSession": lambda: stub.DeleteSession(
                    gateway_pb2.DeleteSessionRequest(session_id="s"), metadata=meta, timeout=20
                ),
            }
            with caplog.at_level(logging.WARNING, logger="llmesh.kernel.upstream"):
                for name, make in calls.items():
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await make()
                    _check(name, caught.value)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in stub.Chat(
                        gateway_pb2.ChatRequest(session_id="s", message="hi"),
                        metadata=meta,
                        timeout=20,
                    ):
                        pass
                _check("Chat", caught.value)
            # Generation does not need memory: it still works.
            reply = await stub.Generate(
                gateway_pb2.GenerateRequest(
                    input=common_pb2.GenerationInput(
                        prompt="hi", sampling=common_pb2.SamplingParams(max_tokens=2)
                    )
                ),
                metadata=meta,
                timeout=30,
            )
            assert reply.usage.completion_tokens >= 1
    # The transport's text, with the address, is in the gateway's log for operators.
    assert any(memory_port in r.getMessage() for r in caplog.records)


def _check(name: str, error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (name, error)
    details = error_details(error)
    assert details["error_info"].reason == "MEMORY_UNAVAILABLE", (name, details)
    assert details["retry_info"].retry_delay.ToMilliseconds() > 0, name
    message = error.details() or ""
    assert not ADDRESSY.search(message), (name, message)
    assert "memory service" in message, (name, message)
