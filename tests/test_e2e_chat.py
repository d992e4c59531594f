"""Chat and streams end to end on real processes (registry, memory on SQLite, one MLX
worker with the tiny model, gateway), each exporting spans over OTLP to this test:
exactly-once turns, mid-stream deadlines, a peer's errors at the gateway, one trace
across gateway -> memory -> inference, and a SIGSTOPped memory service.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2etest.meshes import MODEL, start_paced_mesh

from llmesh.testing.polling import wait_until
from llmesh.testing.rpc import Collector, error_details
from llmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
)
from llmesh_cli.supervisor.mesh import LocalMesh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MEMORY_CAP_S = 1.0


class Mesh:
    def __init__(self, local: LocalMesh, key: str, collector: Collector) -> None:
        self.local = local
        self.gateway = local.address("gateway")
        self.key = key
        self.collector = collector

    def meta(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"), *extra)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Mesh]:
    # The worker is paced (5 ms a step): a stream outlasts the deadline tests' deadlines.
    with start_paced_mesh(
        tmp_path_factory.mktemp("e2e-chat"),
        tiny_model_dir,
        gateway_env={"LLMESH_GATEWAY_CHAT__CONTEXT_CAP_S": str(MEMORY_CAP_S)},
    ) as (local, collector):
        yield Mesh(local, local.create_key(role="user", tenant="acme"), collector)


def _sampling(max_tokens: int) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)


async def _events(call: Any) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    events: list[Any] = []
    try:
        async for event in call:
            events.append(event)
    except grpc.aio.AioRpcError as exc:
        return events, exc
    return events, None


async def test_the_same_message_twice_is_two_turns(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_pb2.ChatRequest(
            session_id="twice", message="continue", sampling=_sampling(3)
        )
        first, _ = await _events(stub.Chat(request, metadata=mesh.meta()))
        second, _ = await _events(stub.Chat(request, metadata=mesh.meta()))
        assert first[-1].done.session_version == 1 and second[-1].done.session_version == 2
        session = await stub.GetSession(
            gateway_pb2.GetSessionRequest(session_id="twice"), metadata=mesh.meta()
        )
        assert session.session.version == 2 and len(session.messages) == 4


async def test_a_reused_key_with_another_message_is_refused_before_generation(
    mesh: Mesh,
) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        first = gateway_pb2.ChatRequest(
            session_id="keyed", message="hello", idempotency_key="K-1", sampling=_sampling(4)
        )
        original, _ = await _events(stub.Chat(first, metadata=mesh.meta()))
        assert original[-1].done.finish_reason == common_pb2.FINISH_REASON_LENGTH
        # The same key and request: the stored turn, with its finish reason and usage.
        replay, _ = await _events(stub.Chat(first, metadata=mesh.meta()))
        assert replay[-1].done.replayed
        assert replay[-1].done.finish_reason == original[-1].done.finish_reason
        assert replay[-1].done.usage == original[-1].done.usage
        # The same key with another message: refused, nothing streamed.
        other = gateway_pb2.ChatRequest(
            session_id="keyed", message="goodbye", idempotency_key="K-1", sampling=_sampling(4)
        )
        events, error = await _events(stub.Chat(other, metadata=mesh.meta()))
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert events == []
        assert "retry_info" not in error_details(error)


async def test_a_stream_deadline_is_deadline_exceeded_with_tokens_delivered(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for call in (
            stub.GenerateStream(
                gateway_pb2.GenerateStreamRequest(
                    input=common_pb2.GenerationInput(prompt="count", sampling=_sampling(8192))
                ),
                metadata=mesh.meta(),
                timeout=2.0,
            ),
            stub.Chat(
                gateway_pb2.ChatRequest(
                    session_id="slow", message="count", sampling=_sampling(8192)
                ),
                metadata=mesh.meta(),
                timeout=2.0,  # paced at 5 ms a step: ~300 of the 1024-token context
            ),
        ):
            events, error = await _events(call)
            delivered = sum(len(e.delta.token_ids) for e in events)
            assert error is not None, f"finished before the deadline: {events[-1]}"
            assert delivered > 0
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
            details = error_details(error)
            assert int(details["error_info"].metadata["tokens_delivered"]) >= delivered
            assert "retry_info" not in details


async def test_a_peer_client_fault_stays_a_client_fault(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        # Valid for the gateway, refused by the worker: longer than the model's context.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(
                gateway_pb2.GenerateRequest(
                    input=common_pb2.GenerationInput(
                        prompt="x " * 30000, model=MODEL, sampling=_sampling(1)
                    )
                ),
                metadata=mesh.meta(),
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "retry_info" not in error_details(err.value)
        assert "127.0.0.1" not in (err.value.details() or "")


def _chat_trace(mesh: Mesh) -> dict[str, set[str]] | None:
    spans = list(mesh.collector.spans)
    roots = [s for svc, s in spans if svc == "gateway" and s.name.endswith("GatewayService/Chat")]
    for root in roots:
        names: dict[str, set[str]] = {}
        for service, span in spans:
            if span.trace_id == root.trace_id:
                names.setdefault(service, set()).add(span.name)
        if all(s in names for s in ("gateway", "memory", "inference")) and any(
            "GetAppend" in n for n in names["memory"]
        ):
            return names
    return None


async def test_one_trace_across_gateway_memory_and_inference(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        await _events(
            stub.Chat(
                gateway_pb2.ChatRequest(session_id="traced", message="hi", sampling=_sampling(2)),
                metadata=mesh.meta(),
            )
        )
    names = wait_until(lambda: _chat_trace(mesh), timeout_s=15, what="a Chat trace")
    assert names is not None
    # The gateway's client spans for its memory and worker calls are in the same trace.
    assert any("MemoryService/GetSession" in n for n in names["gateway"])
    assert any("InferenceService/Generate" in n for n in names["gateway"])


async def test_a_stopped_memory_service_fails_chat_within_its_budget(mesh: Mesh) -> None:
    pid = mesh.local.pid("memory")
    os.killpg(pid, signal.SIGSTOP)
    try:
        async with grpc.aio.insecure_channel(mesh.gateway) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            started = time.monotonic()
            events, error = await _events(
                stub.Chat(
                    gateway_pb2.ChatRequest(session_id="stopped", message="hi"),
                    metadata=mesh.meta(),
                    timeout=20,
                )
            )
            elapsed = time.monotonic() - started
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert events == []
        assert "retry_info" in error_details(error)
        assert elapsed < MEMORY_CAP_S + 1.5, elapsed  # its memory budget, not the 20 s
    finally:
        os.killpg(pid, signal.SIGCONT)
