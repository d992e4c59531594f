"""The door's routes against a scripted gateway, in-process (ASGI transport, real gRPC).

A small gRPC server on a free loopback port plays the gateway: each test sets the events
or the error it answers with, and the server records the requests and metadata it got.
The door's app (``build_app``) is called through httpx's ASGI transport, so every route,
the stream shapes and the error mapping run here rather than only in the e2e children.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llmesh.kernel import errors
from llmesh.kernel.interceptors import STATUS_DETAILS_KEY
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2
from llmesh_openai.asgi import build_app, deadline_of
from llmesh_openai.gateway import GatewayClient
from llmesh_openai.settings import OpenAISettings

AUTH = {"authorization": "Bearer k-1"}
HELLO = [{"role": "user", "content": "hi"}]


@dataclass
class Script:
    """What the fake gateway answers, and what it was asked."""

    events: list[Any] = field(default_factory=list)
    error: errors.LlmeshError | None = None  # raised after the events
    unary: Any = None
    hang: bool = False  # wait until the call is cancelled
    calls: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)


async def _fail(context: grpc.aio.ServicerContext, error: errors.LlmeshError) -> None:
    context.set_trailing_metadata(((STATUS_DETAILS_KEY, error.to_status().SerializeToString()),))
    await context.abort(error.code, error.message)


class _Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, script: Script) -> None:
        self.s = script

    def _record(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.s.calls.append((name, request, dict(context.invocation_metadata() or ())))

    async def _stream(self, name: str, request: Any, context: Any) -> AsyncIterator[Any]:
        self._record(name, request, context)
        if self.s.hang:
            await asyncio.Event().wait()
        for event in self.s.events:
            yield event
        if self.s.error is not None:
            await _fail(context, self.s.error)

    async def GenerateStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for event in self._stream("GenerateStream", request, context):
            yield event

    async def Chat(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for event in self._stream("Chat", request, context):
            yield event

    async def _unary(self, name: str, request: Any, context: Any) -> Any:
        self._record(name, request, context)
        if self.s.error is not None:
            await _fail(context, self.s.error)
        return self.s.unary

    async def Embed(self, request: Any, context: Any) -> Any:
        return await self._unary("Embed", request, context)

    async def ListModels(self, request: Any, context: Any) -> Any:
        return await self._unary("ListModels", request, context)


class _Admin(gateway_pb2_grpc.AdminServiceServicer):
    def __init__(self, script: Script) -> None:
        self.s = script

    async def ListWorkers(self, request: Any, context: Any) -> Any:
        self.s.calls.append(("ListWorkers", request, dict(context.invocation_metadata() or ())))
        if self.s.error is not None:
            await _fail(context, self.s.error)
        return self.s.unary


@dataclass
class Door:
    script: Script
    http: httpx.AsyncClient
    health: health.aio.HealthServicer
    app: Any


@pytest.fixture
async def door() -> AsyncIterator[Door]:
    script = Script()
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(_Gateway(script), server)
    gateway_pb2_grpc.add_AdminServiceServicer_to_server(_Admin(script), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    settings = OpenAISettings(port=0, max_message_bytes=4096, health_timeout_s=30)
    app = build_app(settings, GatewayClient(channel), metrics=lambda: b"door_up 1\n")
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://door") as http:
            yield Door(script, http, checker, app)
    finally:
        await channel.close()
        await server.stop(None)


def _gen(*events: Any) -> list[gateway_pb2.GenerateStreamResponse]:
    return [gateway_pb2.GenerateStreamResponse(**e) for e in events]


START = {"start": gateway_pb2.GenerateStreamStart(model="served-m", worker_id="w1")}


def _delta(text: str) -> dict[str, Any]:
    return {"delta": common_pb2.GenerationDelta(text=text)}


def _done(reason: int, prompt: int = 3, completion: int = 2) -> dict[str, Any]:
    usage = common_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion)
    return {"done": common_pb2.GenerationDone(finish_reason=reason, usage=usage)}


def _sse(reply: httpx.Response) -> list[Any]:
    out = []
    for line in reply.text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_chat_non_streaming_folds_the_events(door: Door) -> None:
    door.script.events = _gen(
        START, _delta("Hel"), _delta("lo"), _done(common_pb2.FINISH_REASON_LENGTH)
    )
    reply = await door.http.post(
        "/v1/chat/completions",
        json={"model": "asked", "messages": HELLO, "max_tokens": 2},
        headers=AUTH | {"x-request-id": "rid-42"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == "rid-42"
    assert reply.headers["x-content-type-options"] == "nosniff"
    body = reply.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "served-m"  # the model that served it, not the one asked
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert "llmesh" not in body
    name, request, metadata = door.script.calls[0]
    assert name == "GenerateStream"
    assert request.input.model == "asked" and request.input.sampling.max_tokens == 2
    assert metadata["authorization"] == "Bearer k-1"
    assert metadata["x-request-id"] == "rid-42"


async def test_chat_stream_with_usage(door: Door) -> None:
    door.script.events = _gen(START, _delta("a"), _delta(""), _delta("b"), _done(0))
    reply = await door.http.post(
        "/v1/chat/completions",
        json={"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    *chunks, usage, done = _sse(reply)
    assert done == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks]
    # the role chunk, one per non-empty text, then the finish chunk
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "a"}, {"content": "b"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert all(c["usage"] is None and c["object"] == "chat.completion.chunk" for c in chunks)
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 5
    assert len({c["id"] for c in [*chunks, usage]}) == 1


async def test_chat_stream_without_events_still_has_role_and_finish(door: Door) -> None:
    door.script.events = []
    reply = await door.http.post("/v1/chat/completions", json={"messages": HELLO, "stream": True})
    assert reply.status_code == 200
    role, finish, done = _sse(reply)
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert finish["choices"][0]["finish_reason"] is None  # no done event came
    assert "usage" not in finish
    assert done == "[DONE]"


async def test_completion_stream_has_text_chunks_and_no_role(door: Door) -> None:
    door.script.events = _gen(START, _delta("x"), _done(common_pb2.FINISH_REASON_EOS))
    reply = await door.http.post("/v1/completions", json={"prompt": "p", "stream": True})
    first, last, done = _sse(reply)
    assert first["object"] == "text_completion" and first["id"].startswith("cmpl-")
    assert first["choices"][0]["text"] == "x"
    assert last["choices"][0] == {
        "index": 0,
        "text": "",
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert done == "[DONE]"
    assert door.script.calls[0][1].input.sampling.max_tokens == 16


async def test_completion_non_streaming(door: Door) -> None:
    door.script.events = _gen(_delta("ok"), _done(common_pb2.FINISH_REASON_STOP_SEQUENCE))
    reply = await door.http.post("/v1/completions", json={"model": "m", "prompt": "p"})
    body = reply.json()
    assert body["object"] == "text_completion" and body["model"] == "m"
    assert body["choices"][0]["text"] == "ok" and body["choices"][0]["finish_reason"] == "stop"
    assert "authorization" not in door.script.calls[0][2]  # none sent, none forwarded


async def test_session_turn_reports_the_memory_extension(door: Door) -> None:
    door.script.events = [
        gateway_pb2.ChatResponse(
            start=gateway_pb2.ChatStart(
                model="m", memory_ids=["m1", "m2"], history_messages=4, recall_degraded=True
            )
        ),
        gateway_pb2.ChatResponse(delta=common_pb2.GenerationDelta(text="yes")),
        gateway_pb2.ChatResponse(
            done=gateway_pb2.ChatDone(
                finish_reason=common_pb2.FINISH_REASON_CONTEXT_FULL,
                usage=common_pb2.Usage(prompt_tokens=1, completion_tokens=1),
                session_version=7,
                replayed=True,
            )
        ),
    ]
    reply = await door.http.post(
        "/v1/chat/completions",
        json={"messages": HELLO, "llmesh": {"session_id": "s-1"}},
    )
    body = reply.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["llmesh"] == {
        "memory_ids": ["m1", "m2"],
        "history_messages": 4,
        "recall_degraded": True,
        "session_version": 7,
        "replayed": True,
    }
    assert door.script.calls[0][0] == "Chat" and door.script.calls[0][1].session_id == "s-1"


async def test_session_stream_puts_the_extension_on_the_finish_chunk(door: Door) -> None:
    door.script.events = [
        gateway_pb2.ChatResponse(start=gateway_pb2.ChatStart(model="m")),
        gateway_pb2.ChatResponse(done=gateway_pb2.ChatDone(session_version=2)),
    ]
    reply = await door.http.post(
        "/v1/completions",
        json={"prompt": "p", "stream": True, "llmesh": {"session_id": "s-2"}},
    )
    finish, done = _sse(reply)
    assert finish["llmesh"]["session_version"] == 2
    assert done == "[DONE]"


async def test_an_error_before_the_first_event_is_the_http_status(door: Door) -> None:
    door.script.error = errors.ResourceExhausted("slow down", retry_after_s=2.5)
    reply = await door.http.post("/v1/chat/completions", json={"messages": HELLO, "stream": True})
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "3" and reply.headers["retry-after-ms"] == "2500"
    assert reply.json()["error"]["type"] == "rate_limit_error"


async def test_an_error_mid_stream_is_the_last_event(door: Door) -> None:
    door.script.events = _gen(START, _delta("Once"))
    door.script.error = errors.Unavailable("worker lost")
    reply = await door.http.post("/v1/completions", json={"prompt": "p", "stream": True})
    assert reply.status_code == 200
    *chunks, last = _sse(reply)
    assert [c["choices"][0]["text"] for c in chunks] == ["Once"]
    assert last["error"]["type"] == "service_unavailable_error"
    assert last["error"]["message"] == "worker lost"


async def test_a_field_violation_names_the_openai_param(door: Door) -> None:
    door.script.error = errors.InvalidArgument(
        "invalid request",
        field_violations=[errors.FieldViolation("input.sampling.temperature", "at most 2", "r")],
    )
    reply = await door.http.post("/v1/chat/completions", json={"messages": HELLO, "temperature": 9})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "temperature" and error["message"] == "temperature: at most 2"


def _embeddings() -> gateway_pb2.EmbedResponse:
    return gateway_pb2.EmbedResponse(
        embeddings=[
            inference_pb2.Embedding(values=[0.5, -1.0]),
            inference_pb2.Embedding(values=[2.0, 0.25]),
        ],
        dimensions=2,
        model="e5",
        prompt_tokens=6,
    )


async def test_embeddings_float_and_base64(door: Door) -> None:
    door.script.unary = _embeddings()
    reply = await door.http.post("/v1/embeddings", json={"input": ["a", "b"]}, headers=AUTH)
    body = reply.json()
    assert body["model"] == "e5" and body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert [d["embedding"] for d in body["data"]] == [[0.5, -1.0], [2.0, 0.25]]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert door.script.calls[0][2]["authorization"] == "Bearer k-1"
    reply = await door.http.post("/v1/embeddings", json={"input": "a", "encoding_format": "base64"})
    raw = base64.b64decode(reply.json()["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.0)  # little-endian float32, as OpenAI's


async def test_embeddings_error_maps_texts_to_input(door: Door) -> None:
    door.script.error = errors.InvalidArgument(
        "bad", field_violations=[errors.FieldViolation("texts[1]", "too long", "r")]
    )
    reply = await door.http.post("/v1/embeddings", json={"input": ["a", "b"]})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "input[1]"


def _models() -> gateway_pb2.ListModelsResponse:
    return gateway_pb2.ListModelsResponse(
        models=[
            gateway_pb2.ServedModel(
                model=common_pb2.ModelInfo(name="a/b", loaded=True, context_length=64),
                worker_ids=["w1"],
            ),
            gateway_pb2.ServedModel(
                model=common_pb2.ModelInfo(name="e5", embedding=True), worker_ids=[]
            ),
        ]
    )


async def test_models_list_and_one_model(door: Door) -> None:
    door.script.unary = _models()
    listing = (await door.http.get("/v1/models", headers=AUTH)).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["a/b", "e5"]
    assert listing["data"][0]["llmesh"] == {
        "loaded": True,
        "embedding": False,
        "context_length": 64,
        "workers": ["w1"],
    }
    one = await door.http.get("/v1/models/a/b")  # a name with a slash
    assert one.status_code == 200 and one.json()["id"] == "a/b"
    assert one.json()["created"] == listing["data"][0]["created"]
    missing = await door.http.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "the model 'nope' does not exist",
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
    }


async def test_workers_is_the_admin_listing(door: Door) -> None:
    door.script.unary = gateway_pb2.ListWorkersResponse(staleness_seconds=1.5)
    reply = await door.http.get("/v1/llmesh/workers", headers=AUTH)
    assert reply.status_code == 200 and reply.json() == {"staleness_seconds": 1.5}
    assert door.script.calls[0][0] == "ListWorkers"
    door.script.error = errors.PermissionDenied("admin role needed")
    refused = await door.http.get("/v1/llmesh/workers", headers=AUTH)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"


async def test_health_follows_the_gateways_readiness(door: Door) -> None:
    await door.health.set("readiness", health_pb2.HealthCheckResponse.SERVING)
    ok = await door.http.get("/health")
    assert ok.status_code == 200 and ok.json() == {"status": "SERVING", "gateway": True}
    await door.health.set("readiness", health_pb2.HealthCheckResponse.NOT_SERVING)
    down = await door.http.get("/health")
    assert down.status_code == 503 and down.json()["gateway"] is False


async def test_metrics_from_the_given_source(door: Door) -> None:
    reply = await door.http.get("/metrics")  # ASGI transport: the client is loopback
    assert reply.status_code == 200 and reply.text == "door_up 1\n"


async def test_bodies_over_the_limit_and_bad_json(door: Door) -> None:
    big = await door.http.post("/v1/embeddings", content=b"[" + b" " * 5000 + b"]")
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    bad = await door.http.post("/v1/embeddings", content=b"{")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    assert door.script.calls == []


async def test_an_unexpected_error_is_a_500_with_the_request_id(door: Door) -> None:
    door.script.unary = "not a message"  # the fake gateway fails to serialize: UNKNOWN
    reply = await door.http.get("/v1/models", headers={"x-request-id": "r-9"})
    assert reply.status_code == 500
    assert reply.json()["error"]["type"] == "server_error"
    assert "r-9" not in reply.json()["error"]["message"]  # a peer's text is not echoed


def _settings() -> OpenAISettings:
    return OpenAISettings(port=0, default_deadline_s=30, max_deadline_s=60)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, 30.0),
        ({b"x-request-timeout": b"5"}, 5.0),
        ({b"x-request-timeout": b"600"}, 60.0),  # capped
        ({b"x-stainless-timeout": b"0", b"x-stainless-read-timeout": b"7.5"}, 7.5),
        ({b"x-stainless-timeout": b"0"}, 30.0),  # the Node SDK's "under a second"
        ({b"x-stainless-timeout": b"12", b"x-stainless-read-timeout": b"7"}, 12.0),
    ],
)
def test_deadline_headers(headers: dict[bytes, bytes], seconds: float) -> None:
    assert deadline_of(headers, _settings()) == seconds


@pytest.mark.parametrize(
    "headers",
    [
        {b"x-request-timeout": b"0"},
        {b"x-request-timeout": b"-1"},
        {b"x-request-timeout": b"inf"},
        {b"x-stainless-read-timeout": b"nan"},
        {b"x-stainless-timeout": b"soon"},
    ],
)
def test_bad_deadline_headers_are_refused(headers: dict[bytes, bytes]) -> None:
    from llmesh_openai.errors import OpenAIError

    with pytest.raises(OpenAIError) as info:
        deadline_of(headers, _settings())
    name = next(iter(headers)).decode()
    assert info.value.status == 400 and info.value.param == name


async def _call(app: Any, path: str, body: bytes, *, disconnect: bool) -> list[dict[str, Any]]:
    """One raw ASGI call: the body, then (``disconnect``) the client going away at once."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    gone = asyncio.Event()
    if disconnect:
        gone.set()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 60)
    return sent


def _status_and_body(sent: list[dict[str, Any]]) -> tuple[int, Any]:
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": HELLO}),
        ("/v1/chat/completions", {"messages": HELLO, "stream": True}),
        ("/v1/embeddings", {"input": "a"}),
    ],
)
async def test_a_client_that_goes_away_cancels_the_gateway_call(
    door: Door, path: str, body: dict[str, Any]
) -> None:
    door.script.hang = True  # the gateway never answers: only the disconnect ends the call
    sent = await _call(door.app, path, json.dumps(body).encode(), disconnect=True)
    status, answer = _status_and_body(sent)
    assert status == 499
    assert answer["error"]["code"] == "client_closed_request"
    assert answer["error"]["type"] == "cancelled"


async def test_a_bug_in_a_route_is_a_500_that_quotes_the_request_id(
    door: Door, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmesh_openai import routes

    def broken(_raw: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "parse_completion", broken)
    reply = await door.http.post(
        "/v1/completions", json={"prompt": "p"}, headers={"x-request-id": "r-77"}
    )
    assert reply.status_code == 500
    assert reply.headers["content-type"] == "application/json"  # not Starlette's text/plain
    error = reply.json()["error"]
    assert error["type"] == "server_error"
    assert error["message"] == "internal error; quote request id r-77 when reporting it"
    assert "a bug" not in reply.text
    assert reply.headers["x-request-id"] == "r-77"


async def test_a_request_id_too_long_is_replaced(door: Door) -> None:
    reply = await door.http.get("/health/live", headers={"x-request-id": "x" * 129})
    assert reply.status_code == 200
    rid = reply.headers["x-request-id"]
    assert rid != "x" * 129 and 0 < len(rid) <= 128


async def test_non_http_scopes_pass_through(door: Door) -> None:
    seen: list[str] = []

    async def inner(scope: Any, _receive: Any, _send: Any) -> None:
        seen.append(scope["type"])

    from llmesh_openai.asgi import RequestMiddleware

    middleware = RequestMiddleware(inner, OpenAISettings(port=0))
    await middleware({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]
