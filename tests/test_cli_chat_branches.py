"""In-process tests of ``llmesh chat`` (apps/cli/llmesh_cli/chat.py) and the client helpers
it uses, against a scripted gateway on a free loopback port.

Each test feeds the prompt's lines from a list and scripts the gateway's answers: a turn
that fails before any text is retried once with the same idempotency key; one that fails
after text, or with another code, is reported; 401/403 end the chat.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from llmesh.kernel import errors
from llmesh.kernel.interceptors import STATUS_DETAILS_KEY
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from llmesh_cli import chat, client


@dataclass
class Turn:
    """One Chat call's answer: ``texts`` streamed, then ``error`` (or done)."""

    texts: list[str] = field(default_factory=list)
    error: errors.LlmeshError | None = None
    version: int = 1


@dataclass
class Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    turns: list[Turn] = field(default_factory=list)
    session_error: errors.LlmeshError | None = None
    chats: list[tuple[gateway_pb2.ChatRequest, dict[str, str]]] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)

    async def Chat(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.chats.append((request, dict(context.invocation_metadata() or ())))
        turn = self.turns.pop(0)
        yield gateway_pb2.ChatResponse(start=gateway_pb2.ChatStart(model="m"))
        for text in turn.texts:
            yield gateway_pb2.ChatResponse(delta=common_pb2.GenerationDelta(text=text))
        if turn.error is not None:
            await _fail(context, turn.error)
        yield gateway_pb2.ChatResponse(done=gateway_pb2.ChatDone(session_version=turn.version))

    async def GetSession(self, request: Any, context: Any) -> Any:
        self.sessions.append(request.session_id)
        if self.session_error is not None:
            await _fail(context, self.session_error)
        return gateway_pb2.GetSessionResponse(
            messages=[
                common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="q"),
                common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_ASSISTANT, content="a"),
            ]
        )


async def _fail(context: Any, error: errors.LlmeshError) -> None:
    context.set_trailing_metadata(((STATUS_DETAILS_KEY, error.to_status().SerializeToString()),))
    await context.abort(error.code, error.message)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    fake = Gateway()
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _args(target: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    chat.register(parser.add_subparsers())
    return parser.parse_args(
        ["chat", "--target", target, "--api-key", "k-1", "--timeout", "60", *argv]
    )


def _lines(monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    pending = list(lines)

    def read() -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    monkeypatch.setattr(chat, "_read_line", read)


UNAVAILABLE = errors.Unavailable("worker lost", retry_after_s=0.1)


async def test_a_conversation(
    gateway: tuple[Gateway, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, target = gateway
    fake.turns = [
        Turn(texts=["Hi", " there"], version=2),
        Turn(error=UNAVAILABLE),  # before any text: retried once, same key
        Turn(texts=["again"], version=4),
    ]
    _lines(monkeypatch, "", "hello", "/session", "/new", "second", "/quit", "never read")
    args = _args(target, "--session-id", "s-1", "--recall-k", "0", "--remember")
    assert await chat._chat(args) == 0
    out, err = capsys.readouterr()
    assert out == "Hi there\nuser: q\nassistant: a\nagain\n"
    assert "session s-1 (commands: /quit" in err
    first, (retry1, _), (retry2, _) = fake.chats
    request, metadata = first
    assert metadata["authorization"] == "Bearer k-1"
    assert request.session_id == "s-1" and request.message == "hello"
    assert request.disable_recall and request.recall.k == 0 and request.remember_message
    assert retry1.idempotency_key == retry2.idempotency_key != request.idempotency_key
    assert retry1.session_id.startswith("cli-") and retry1.session_id != "s-1"  # /new
    assert fake.sessions == ["s-1"]
    assert fake.turns == []


async def test_failures_are_reported_and_the_chat_goes_on(
    gateway: tuple[Gateway, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, target = gateway
    fake.turns = [
        Turn(texts=["par"], error=UNAVAILABLE),  # after text: not retried (would duplicate)
        Turn(error=errors.InvalidArgument("message too long")),
        Turn(error=UNAVAILABLE),
        Turn(error=UNAVAILABLE),  # the retry fails too
    ]
    fake.session_error = errors.NotFound("no session x", reason="SESSION_NOT_FOUND")
    _lines(monkeypatch, "one", "two", "three", "/session")
    assert await chat._chat(_args(target)) == 0  # EOF ends it
    out, err = capsys.readouterr()
    assert out.startswith("par")
    assert err.count("UNAVAILABLE: worker lost") == 2
    assert "INVALID_ARGUMENT: message too long" in err
    assert "NOT_FOUND: no session x" in err and "reason: SESSION_NOT_FOUND" in err
    assert len(fake.chats) == 4 and fake.turns == []


@pytest.mark.parametrize(
    "error", [errors.Unauthenticated("bad key"), errors.PermissionDenied("no role")]
)
async def test_auth_failures_end_the_chat(
    gateway: tuple[Gateway, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: errors.LlmeshError,
) -> None:
    fake, target = gateway
    fake.turns = [Turn(error=error)]
    _lines(monkeypatch, "hello", "not sent")
    assert await chat._chat(_args(target)) == 1
    assert error.message in capsys.readouterr().err
    assert len(fake.chats) == 1


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    async def interrupted(_args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(chat, "_chat", interrupted)
    assert chat._run(argparse.Namespace()) == 130


def test_api_key_from_flag_env_or_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMESH_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="no API key"):
        client.api_key(argparse.Namespace(api_key=None))
    monkeypatch.setenv("LLMESH_API_KEY", "from-env")
    assert client.api_key(argparse.Namespace(api_key=None)) == "from-env"
    assert client.api_key(argparse.Namespace(api_key="flag")) == "flag"


def test_missing_ca_file_exits(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such file"):
        client.open_channel("127.0.0.1:1", ca_file=tmp_path / "ca.pem")


def test_describe_error_lists_every_detail() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="slow")
    info = error_details_pb2.ErrorInfo(reason="RATE_LIMITED", metadata={"b": "2", "a": "1"})
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="message", description="too long")
        ]
    )
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=250_000_000))
    quota = error_details_pb2.QuotaFailure(
        violations=[error_details_pb2.QuotaFailure.Violation(subject="tenant:t", description="x")]
    )
    for detail in (info, bad, retry, quota, common_pb2.Usage()):  # an unknown one is skipped
        status.details.add().Pack(detail)
    trailers = grpc.aio.Metadata((STATUS_DETAILS_KEY, status.SerializeToString()))
    exc = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), trailers, "slow"
    )
    assert client.describe_error(exc).splitlines() == [
        "RESOURCE_EXHAUSTED: slow",
        "  reason: RATE_LIMITED, a=1, b=2",
        "  field message: too long",
        "  retry after 0.25s",
        "  quota tenant:t: x",
    ]
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), ""
    )
    assert client.describe_error(bare) == "UNAVAILABLE: (no message)"
