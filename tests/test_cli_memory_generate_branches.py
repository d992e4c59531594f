"""In-process tests of ``llmesh remember`` / ``recall`` (memory_cmds.py) and ``llmesh
generate`` (generate.py) against a scripted gateway served from a thread (the commands
run their own event loop with ``asyncio.run``)."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from llmesh.kernel import errors
from llmesh.kernel.interceptors import STATUS_DETAILS_KEY
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from llmesh_cli import generate, memory_cmds


@dataclass
class Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    reply: Any = None
    events: list[Any] = field(default_factory=list)
    error: errors.LlmeshError | None = None
    requests: list[tuple[Any, dict[str, str]]] = field(default_factory=list)

    def _fail(self, context: Any) -> None:
        assert self.error is not None
        context.set_trailing_metadata(
            ((STATUS_DETAILS_KEY, self.error.to_status().SerializeToString()),)
        )
        context.abort(self.error.code, self.error.message)

    def _unary(self, request: Any, context: Any) -> Any:
        self.requests.append((request, dict(context.invocation_metadata())))
        if self.error is not None:
            self._fail(context)
        return self.reply

    def Remember(self, request: Any, context: Any) -> Any:
        return self._unary(request, context)

    def Recall(self, request: Any, context: Any) -> Any:
        return self._unary(request, context)

    def GenerateStream(self, request: Any, context: Any) -> Iterator[Any]:
        self.requests.append((request, dict(context.invocation_metadata())))
        yield from self.events
        if self.error is not None:
            self._fail(context)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gateway, str]]:
    monkeypatch.setenv("LLMESH_API_KEY", "k-env")
    fake = Gateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _args(target: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    memory_cmds.register(subparsers)
    generate.register(subparsers)
    return parser.parse_args([*argv, "--target", target])


def _run(args: argparse.Namespace) -> int:
    result: int = args.func(args)
    return result


def test_remember_text_notes_and_request(
    gateway: tuple[Gateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = gateway
    fake.reply = gateway_pb2.RememberResponse(id="m-1", duplicate=True, embedded=False)
    args = _args(
        target, "remember", "likes tea", "--meta", "topic=food", "--meta", "src=",
        "--ttl", "60", "--idempotency-key", "ik",
    )  # fmt: skip
    assert _run(args) == 0
    assert capsys.readouterr().out == "m-1 (duplicate, vector pending)\n"
    request, metadata = fake.requests[0]
    assert metadata["authorization"] == "Bearer k-env"
    draft = request.memory
    assert draft.text == "likes tea" and draft.idempotency_key == "ik"
    assert dict(draft.metadata.entries) == {"topic": "food", "src": ""}
    assert draft.ttl.seconds == 60
    fake.reply = gateway_pb2.RememberResponse(id="m-2", embedded=True)
    assert _run(_args(target, "remember", "x")) == 0
    assert capsys.readouterr().out == "m-2\n"  # no notes


def test_remember_json_and_stdin(
    gateway: tuple[Gateway, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, target = gateway
    fake.reply = gateway_pb2.RememberResponse(id="m-3", embedded=True)
    monkeypatch.setattr("sys.stdin", io.StringIO("  from stdin \n"))
    assert _run(_args(target, "remember", "-", "--json")) == 0
    assert json.loads(capsys.readouterr().out) == {
        "id": "m-3",
        "duplicate": False,
        "embedded": True,
    }
    assert fake.requests[0][0].memory.text == "from stdin"


@pytest.mark.parametrize("pair", ["novalue", "=v"])
def test_bad_pairs_exit_with_the_flag(gateway: tuple[Gateway, str], pair: str) -> None:
    _, target = gateway
    with pytest.raises(SystemExit, match=r"--meta takes KEY=VALUE"):
        _run(_args(target, "remember", "x", "--meta", pair))
    with pytest.raises(SystemExit, match=r"--filter takes KEY=VALUE"):
        _run(_args(target, "recall", "x", "--filter", pair))


def test_remember_error_exits_1(
    gateway: tuple[Gateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = gateway
    fake.error = errors.InvalidArgument(
        "invalid request",
        field_violations=[errors.FieldViolation("memory.text", "must not be empty", "r")],
    )
    assert _run(_args(target, "remember", " ")) == 1
    err = capsys.readouterr().err
    assert err.startswith("llmesh remember: INVALID_ARGUMENT: invalid request")
    assert "field memory.text: must not be empty" in err


def _hit(mid: str, text: str, score: float) -> common_pb2.MemoryHit:
    return common_pb2.MemoryHit(
        memory=common_pb2.Memory(id=mid, text=text),
        score=score,
        semantic_score=-0.25,
        keyword_score=0.5,
    )


def test_recall_text(gateway: tuple[Gateway, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, target = gateway
    fake.reply = gateway_pb2.RecallResponse(
        hits=[_hit("m-1", "likes tea", 0.75)], degraded=True, degraded_reason="keyword only"
    )
    args = _args(
        target, "recall", "tea", "-k", "3", "--mode", "rrf", "--semantic-weight", "0.7",
        "--keyword-weight", "0.3", "--min-score", "0.1", "--filter", "topic=food",
    )  # fmt: skip
    assert _run(args) == 0
    out, err = capsys.readouterr()
    assert out == "0.750  sem -0.250  kw 0.500  m-1  likes tea\n"
    assert err == "(degraded: keyword only)\n"
    options = fake.requests[0][0].options
    assert options.k == 3 and options.mode == common_pb2.FUSION_MODE_RRF
    assert options.semantic_weight == pytest.approx(0.7)
    assert options.keyword_weight == pytest.approx(0.3)
    assert options.min_score == pytest.approx(0.1)
    assert dict(options.metadata_filter.entries) == {"topic": "food"}


def test_recall_nothing_found_and_defaults(
    gateway: tuple[Gateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = gateway
    fake.reply = gateway_pb2.RecallResponse()
    assert _run(_args(target, "recall", "tea")) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == "no memories found\n"
    options = fake.requests[0][0].options
    assert options.mode == common_pb2.FUSION_MODE_WEIGHTED
    assert not options.HasField("semantic_weight") and not options.HasField("keyword_weight")


def test_recall_json_and_error(
    gateway: tuple[Gateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = gateway
    fake.reply = gateway_pb2.RecallResponse(hits=[_hit("m-9", "t", 0.5)])
    assert _run(_args(target, "recall", "q", "--json")) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["hits"][0]["memory"]["id"] == "m-9" and body["degraded"] is False
    fake.error = errors.Unavailable("memory down", reason="MEMORY_UNAVAILABLE")
    assert _run(_args(target, "recall", "q")) == 1
    assert "llmesh recall: UNAVAILABLE: memory down" in capsys.readouterr().err


def test_generate_streams_and_reports_usage(
    gateway: tuple[Gateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = gateway
    usage = common_pb2.Usage(prompt_tokens=4, completion_tokens=2, time_to_first_token_ms=12.4)
    fake.events = [
        gateway_pb2.GenerateStreamResponse(start=gateway_pb2.GenerateStreamStart(model="m")),
        gateway_pb2.GenerateStreamResponse(delta=common_pb2.GenerationDelta(text="Hel")),
        gateway_pb2.GenerateStreamResponse(delta=common_pb2.GenerationDelta(text="lo")),
        gateway_pb2.GenerateStreamResponse(done=common_pb2.GenerationDone(usage=usage)),
    ]
    args = _args(
        target, "generate", "Say hi", "--usage", "--max-tokens", "8", "--temperature", "0",
        "--seed", "5", "--stop", "\n", "--session-id", "s-1", "--model", "m",
    )  # fmt: skip
    assert _run(args) == 0
    out, err = capsys.readouterr()
    assert out == "Hello\n"
    assert "[4 prompt + 2 completion tokens, first token 12 ms]" in err
    request = fake.requests[0][0]
    assert request.input.prompt == "Say hi" and request.session_id == "s-1"
    sampling = request.input.sampling
    assert (sampling.max_tokens, sampling.seed, list(sampling.stop)) == (8, 5, ["\n"])
    assert sampling.HasField("temperature") and not sampling.HasField("top_p")


def test_generate_from_stdin_without_usage(
    gateway: tuple[Gateway, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, target = gateway
    fake.events = [
        gateway_pb2.GenerateStreamResponse(delta=common_pb2.GenerationDelta(text="ok")),
        gateway_pb2.GenerateStreamResponse(done=common_pb2.GenerationDone()),
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("piped prompt"))
    assert _run(_args(target, "generate")) == 0
    out, err = capsys.readouterr()
    assert out == "ok\n" and "prompt +" not in err
    assert fake.requests[0][0].input.prompt == "piped prompt"


def test_generate_error_mid_stream_exits_1(
    gateway: tuple[Gateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = gateway
    fake.events = [
        gateway_pb2.GenerateStreamResponse(delta=common_pb2.GenerationDelta(text="par")),
    ]
    fake.error = errors.Unavailable("worker lost", reason="STREAM_INTERRUPTED")
    assert _run(_args(target, "generate", "p")) == 1
    out, err = capsys.readouterr()
    assert out == "par"  # no newline after a cut stream
    assert "llmesh generate: UNAVAILABLE: worker lost" in err
    assert "reason: STREAM_INTERRUPTED" in err
