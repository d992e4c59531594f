"""Chat turn paths the mesh tests rarely reach, in process over a scripted memory stub:
a replayed turn's done event from partial annotations, the degraded start event, the
append retried on a version conflict (and when it gives up), remembering that fails,
and which memory failures fail the turn as MEMORY_UNAVAILABLE."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from llmesh.kernel import errors
from llmesh.kernel.interceptors import STATUS_DETAILS_KEY
from llmesh.v1 import common_pb2, gateway_pb2, memory_pb2
from llmesh_gateway import chat
from llmesh_gateway.chat import ChatTurns, Context, replayed_done
from llmesh_gateway.principal import Principal

ALICE = Principal(subject="k", tenant="t1", role="user", kind="api_key")
REQUEST = gateway_pb2.ChatRequest(session_id="s1", message="hi")


def _peer(error: errors.LlmeshError) -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata()
    trailers.add(STATUS_DETAILS_KEY, error.to_status().SerializeToString())
    return grpc.aio.AioRpcError(error.code, grpc.aio.Metadata(), trailers, error.message, "")


class Memory:
    """AppendMessages and Remember answering from a script."""

    def __init__(self, appends: list[Any], remember: Any = None) -> None:
        self.appends = appends
        self.remember = remember
        self.versions: list[int] = []

    async def AppendMessages(self, request: Any, **kwargs: Any) -> Any:
        self.versions.append(request.expected_version)
        answer = self.appends.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def Remember(self, request: Any, **kwargs: Any) -> Any:
        if isinstance(self.remember, BaseException):
            raise self.remember
        return memory_pb2.MemoryServiceRememberResponse()


def _context(version: int = 3) -> Context:
    return Context(version=version, history=[], hits=[], degraded=False)


async def _append(turns: ChatTurns) -> memory_pb2.AppendMessagesResponse:
    return await turns.append(
        principal=ALICE,
        request=REQUEST,
        reply="hello",
        context=_context(),
        key="chat:k",
        fingerprint="f",
        notes={},
    )


def _conflict(current: str | None) -> grpc.aio.AioRpcError:
    metadata = {} if current is None else {"current_version": current}
    return _peer(errors.Aborted("version conflict", reason="VERSION_CONFLICT", metadata=metadata))


def test_replayed_done_reads_what_was_stored() -> None:
    stored = memory_pb2.GetAppendResponse(version=9)
    stored.annotations.entries["finish_reason"] = "FINISH_REASON_LENGTH"
    stored.annotations.entries["usage"] = '{"promptTokens": 4, "completionTokens": 2, "x": 1}'
    done = replayed_done(stored)
    assert (done.session_version, done.replayed) == (9, True)
    assert done.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (4, 2)
    bare = memory_pb2.GetAppendResponse(version=2)
    bare.annotations.entries["finish_reason"] = "NOT_A_REASON"
    done = replayed_done(bare)
    assert done.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED
    assert done.usage == common_pb2.Usage()


def test_the_start_event_says_why_recall_was_degraded() -> None:
    plain = Context(version=1, history=[], hits=[], degraded=False).start("m", "w")
    assert (plain.start.model, plain.start.worker_id) == ("m", "w")
    assert not plain.start.recall_degraded and plain.start.degraded_reason == ""
    vague = Context(version=1, history=[], hits=[], degraded=True).start("m", "w")
    assert vague.start.degraded_reason == "recall ran keyword-only or failed"
    named = Context(1, [], [], True, degraded_reason="recall timed out").start("m", "w")
    assert named.start.degraded_reason == "recall timed out"


async def test_a_version_conflict_is_retried_at_the_current_version() -> None:
    ok = memory_pb2.AppendMessagesResponse(version=8)
    memory = Memory([_conflict("7"), ok])
    turns = ChatTurns(memory, router=None)  # type: ignore[arg-type]
    assert await _append(turns) == ok
    assert memory.versions == [3, 7]


@pytest.mark.parametrize("current", [None, "seven"])
async def test_a_conflict_without_a_usable_version_is_raised(current: str | None) -> None:
    memory = Memory([_conflict(current)])
    with pytest.raises(errors.Aborted) as info:
        await _append(ChatTurns(memory, router=None))  # type: ignore[arg-type]
    assert info.value.message == "version conflict"
    assert memory.versions == [3]


async def test_a_session_that_keeps_changing_gives_up() -> None:
    memory = Memory([_conflict(str(v)) for v in range(10, 10 + chat.MAX_APPEND_ATTEMPTS)])
    with pytest.raises(errors.Aborted) as info:
        await _append(ChatTurns(memory, router=None))  # type: ignore[arg-type]
    assert info.value.reason == "VERSION_CONFLICT"
    assert info.value.retry_after_s == 0.1
    assert len(memory.versions) == chat.MAX_APPEND_ATTEMPTS
    assert memory.versions[1:] == list(range(10, 10 + chat.MAX_APPEND_ATTEMPTS - 1))


async def test_remembering_that_fails_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = Memory([], remember=_peer(errors.Unavailable("down")))
    with caplog.at_level(logging.WARNING):
        await ChatTurns(memory, router=None).remember(ALICE, "my name is Ann", "chat:k")  # type: ignore[arg-type]
    assert "could not remember the chat message (UNAVAILABLE)" in caplog.text


async def test_recall_disabled_asks_nothing() -> None:
    turns = ChatTurns(Memory([]), router=None)  # type: ignore[arg-type]
    assert await turns._recall("t1", "q", common_pb2.RecallOptions(), disabled=True) == (
        [],
        False,
        "",
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.Unavailable("down"), errors.Unavailable),
        (errors.DeadlineExceeded("slow"), errors.Unavailable),
        (errors.ResourceExhausted("busy"), errors.Unavailable),
        (errors.InvalidArgument("bad"), errors.InvalidArgument),
    ],
)
async def test_which_memory_failures_fail_the_turn(
    error: errors.LlmeshError, expected: type[errors.LlmeshError]
) -> None:
    turns = ChatTurns(Memory([]), router=None)  # type: ignore[arg-type]

    async def gather(*args: Any) -> Context:
        raise error

    turns.gather = gather  # type: ignore[method-assign]
    with pytest.raises(expected) as info:
        await turns._context(ALICE, REQUEST, "chat:k")
    if expected is errors.Unavailable:
        assert info.value.reason == "MEMORY_UNAVAILABLE"
        assert info.value.retry_after_s == 1.0
    else:
        assert info.value is error
