"""Chat turns: exactly once, keyed by request not text, bounded memory budget; the
gateway's translation of worker errors and mid-stream deadlines."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, gateway_pb2


async def _chat(mesh: Any, request: Any, *extra: tuple[str, str]) -> list[Any]:
    meta = (*mesh.auth(mesh.user_key), *extra)
    return [c async for c in mesh.stub().Chat(request, metadata=meta)]


def _calls(mesh: Any) -> int:
    return sum(w.calls for w in mesh.workers.values())


async def test_the_same_message_later_in_a_session_is_a_new_turn(mesh: Any) -> None:
    request = gateway_pb2.ChatRequest(session_id="cont", message="continue")
    first = await _chat(mesh, request)
    second = await _chat(mesh, request)
    assert first[-1].done.session_version == 1 and not first[-1].done.replayed
    assert second[-1].done.session_version == 2 and not second[-1].done.replayed
    assert _calls(mesh) == 2
    session = await mesh.stub().GetSession(
        gateway_pb2.GetSessionRequest(session_id="cont"), metadata=mesh.auth(mesh.user_key)
    )
    assert session.session.version == 2 and len(session.messages) == 4


async def test_a_key_reused_with_another_message_is_refused_before_generation(mesh: Any) -> None:
    await _chat(mesh, gateway_pb2.ChatRequest(session_id="k", message="a", idempotency_key="K"))
    calls = _calls(mesh)
    received: list[Any] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in mesh.stub().Chat(
            gateway_pb2.ChatRequest(session_id="k", message="b", idempotency_key="K"),
            metadata=mesh.auth(mesh.user_key),
        ):
            received.append(event)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert mesh.details(err.value)["error_info"].reason == "IDEMPOTENCY_KEY_REUSED"
    assert "retry_info" not in mesh.details(err.value)
    assert received == [] and _calls(mesh) == calls  # nothing generated, nothing streamed


async def test_a_replayed_turn_reports_its_original_finish_reason_and_usage(mesh: Any) -> None:
    request = gateway_pb2.ChatRequest(session_id="r", message="hello", idempotency_key="R1")
    first = await _chat(mesh, request)
    again = await _chat(mesh, request)
    assert again[-1].done.replayed and not first[-1].done.replayed
    assert again[-1].done.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert again[-1].done.usage == first[-1].done.usage
    assert again[-1].done.session_version == first[-1].done.session_version == 1
    reply = "".join(c.delta.text for c in first)
    assert "".join(c.delta.text for c in again) == reply
    assert _calls(mesh) == 1


async def test_a_hung_memory_service_fails_the_turn_within_its_budget(mesh_factory: Any) -> None:
    async with mesh_factory(chat={"context_cap_s": 0.3}) as mesh:
        mesh.memory.hang.update({"GetSession", "GetAppend", "Recall"})
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _chat(mesh, gateway_pb2.ChatRequest(session_id="h", message="hi"))
        elapsed = time.monotonic() - started
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert mesh.details(err.value)["error_info"].reason == "MEMORY_UNAVAILABLE"
        assert elapsed < 0.3 + 1.0  # its memory budget plus slack, not the 30 s deadline
        assert _calls(mesh) == 0


async def test_a_hung_recall_answers_without_memories_marked_degraded(mesh_factory: Any) -> None:
    async with mesh_factory(chat={"context_cap_s": 0.3}) as mesh:
        mesh.memory.hang.add("Recall")
        started = time.monotonic()
        events = await _chat(mesh, gateway_pb2.ChatRequest(session_id="d", message="hi"))
        assert time.monotonic() - started < 0.3 + 1.0
        start = events[0].start
        assert start.recall_degraded and "memory search" in start.degraded_reason
        assert list(start.memory_ids) == []
        assert events[-1].done.session_version == 1


async def test_a_deadline_passing_mid_stream_is_deadline_exceeded(mesh: Any) -> None:
    for worker in mesh.workers.values():
        worker.mode = "hang"  # one token, then nothing
    # The gateway ends the stream 20 ms before the client's own deadline, with details;
    # on a loaded machine the client's timer can still win that race (a bare
    # DEADLINE_EXCEEDED): the gateway's answer must arrive in one of three tries.
    for _ in range(3):
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for event in mesh.stub().GenerateStream(
                gateway_pb2.GenerateStreamRequest(input=common_pb2.GenerationInput(prompt="p")),
                metadata=mesh.auth(mesh.user_key),
                timeout=0.5,
            ):
                received += len(event.delta.token_ids)
        assert received == 1
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        details = mesh.details(err.value)
        if "error_info" in details:
            break
    assert details["error_info"].metadata["tokens_delivered"] == "1"
    assert "retry_info" not in details


async def test_two_concurrent_calls_with_one_key_generate_the_turn_once(mesh: Any) -> None:
    """The same request sent twice at once (one key): one call generates, the other
    waits for it in the gateway and replays the same text; one turn is stored."""
    gate = asyncio.Event()
    for worker in mesh.workers.values():
        worker.gate = gate  # the first call's tokens wait until the second one is queued
    inflight = mesh.gateway.chat_inflight
    request = gateway_pb2.ChatRequest(session_id="twice", message="hello", idempotency_key="T")

    async def calls(n: int) -> bool:
        return _calls(mesh) == n

    async def waiting() -> bool:
        return bool(inflight.waiting == 1)

    first = asyncio.create_task(_chat(mesh, request))
    await await_until(lambda: calls(1), what="the first call generating")
    second = asyncio.create_task(_chat(mesh, request))
    await await_until(waiting, what="the second call waiting for the first")
    gate.set()
    one, two = await asyncio.gather(first, second)
    text = "".join(c.delta.text for c in one)
    assert text and "".join(c.delta.text for c in two) == text
    assert not one[-1].done.replayed and two[-1].done.replayed
    assert one[-1].done.session_version == two[-1].done.session_version == 1
    assert two[-1].done.usage == one[-1].done.usage
    assert _calls(mesh) == 1 and mesh.memory.appends == 1
    assert inflight.running == 0 and inflight.waiting == 0


async def test_a_waiting_call_generates_when_the_first_fails(mesh: Any) -> None:
    """The first call with a key fails before storing anything: the call that waited
    for it generates the turn itself."""
    gate = asyncio.Event()
    for worker in mesh.workers.values():
        worker.gate = gate
        worker.mode = "fail_after"  # a token, then the worker crashes
    inflight = mesh.gateway.chat_inflight
    request = gateway_pb2.ChatRequest(session_id="retry", message="hi", idempotency_key="F")

    async def calls(n: int) -> bool:
        return _calls(mesh) == n

    async def waiting() -> bool:
        return bool(inflight.waiting == 1)

    first = asyncio.create_task(_chat(mesh, request))
    await await_until(lambda: calls(1), what="the first call generating")
    second = asyncio.create_task(_chat(mesh, request))
    await await_until(waiting, what="the second call waiting for the first")
    later = asyncio.Event()
    for worker in mesh.workers.values():
        worker.gate = later  # the second call's tokens wait for this one
    gate.set()
    with pytest.raises(grpc.aio.AioRpcError):
        await first
    for worker in mesh.workers.values():
        worker.mode = "ok"
    later.set()
    events = await second
    assert not events[-1].done.replayed and events[-1].done.session_version == 1
    assert _calls(mesh) == 2 and mesh.memory.appends == 1


def test_the_contract_promises_no_history_degraded_turn() -> None:
    """A turn whose history cannot be read fails fast (UNAVAILABLE, see the hung-memory
    test): nothing can set a "history degraded" flag, so the contract has none."""
    assert "history_degraded" not in gateway_pb2.ChatStart.DESCRIPTOR.fields_by_name
    assert "recall_degraded" in gateway_pb2.ChatStart.DESCRIPTOR.fields_by_name


async def test_a_deadline_after_the_reply_streamed_says_what_was_delivered(mesh: Any) -> None:
    """The reply streamed, then storing it ran out of time: DEADLINE_EXCEEDED that
    carries tokens_delivered like any deadline passing mid-stream."""
    mesh.memory.hang.add("AppendMessages")
    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in mesh.stub().Chat(
            gateway_pb2.ChatRequest(session_id="late", message="hi"),
            metadata=mesh.auth(mesh.user_key),
            timeout=1.0,
        ):
            received += len(event.delta.token_ids)
    assert received == 3
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    details = mesh.details(err.value)
    assert details["error_info"].metadata["tokens_delivered"] == "3"
    assert "retry_info" not in details
