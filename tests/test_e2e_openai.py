"""The OpenAI HTTP door end to end: the `llmesh up` plan (door included) driven with the
official ``openai`` Python SDK (and httpx where the SDK hides the wire)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx  # the HTTP client the openai SDK itself uses
import openai
import pytest
from e2etest.openai_mesh import MODEL, OpenAIMesh, start_openai_mesh

from llmesh.testing.polling import wait_until
from llmesh.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
NODE_TESTS = ROOT / "tests" / "node" / "openai_door.test.mjs"
DOCS = ROOT / "docs" / "openai.md"
EMBEDDER = "all-minilm-l6-v2"
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[OpenAIMesh]:
    with start_openai_mesh(tmp_path_factory.mktemp("e2e-openai"), tiny_model_dir) as started:
        yield started


def client(mesh: OpenAIMesh, who: str = "alice", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=mesh.base_url, api_key=mesh.keys.get(who, who), max_retries=0, **kwargs
    )


def test_chat_completion(mesh: OpenAIMesh) -> None:
    reply = client(mesh).chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "be brief"}, *HELLO],
        max_tokens=6,
        temperature=0,
        seed=7,
    )
    assert reply.object == "chat.completion" and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6
    # max_completion_tokens is the same limit under its newer name.
    again = client(mesh).chat.completions.create(
        model=MODEL, messages=HELLO, max_completion_tokens=3, temperature=0
    )
    assert again.usage is not None and again.usage.completion_tokens == 3


def test_stream_with_usage_and_done(mesh: OpenAIMesh) -> None:
    stream = client(mesh).chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length" and all(f is None for f in finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    whole = client(mesh).chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=5, temperature=0
    )
    assert text == whole.choices[0].message.content  # greedy: the same text both ways
    # On the wire: server-sent events ending in [DONE].
    with httpx.stream(
        "POST",
        f"{mesh.base_url}/chat/completions",
        json={"model": MODEL, "messages": HELLO, "max_tokens": 2, "stream": True},
        headers={"authorization": f"Bearer {mesh.keys['alice']}"},
        timeout=30,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_stop_sequences_and_seed(mesh: OpenAIMesh) -> None:
    api = client(mesh)
    free = api.completions.create(model=MODEL, prompt="once upon", max_tokens=24, temperature=0)
    text = free.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"no usable stop string in {text!r}"
    cut = api.completions.create(
        model=MODEL, prompt="once upon", max_tokens=24, temperature=0, stop=[stop, "\x01"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text and text.startswith(cut.choices[0].text)
    one = api.completions.create(model=MODEL, prompt="once upon", max_tokens=24, temperature=0,
                                 stop=stop)  # fmt: skip
    assert one.choices[0].text == cut.choices[0].text
    sampled = [
        api.completions.create(
            model=MODEL, prompt="once", max_tokens=8, temperature=1.0, top_p=0.9, seed=42
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # the seed makes sampling repeatable


def test_completions_stream(mesh: OpenAIMesh) -> None:
    chunks = list(
        client(mesh).completions.create(
            model=MODEL, prompt="hello", max_tokens=4, temperature=0, stream=True
        )
    )
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in chunks)


def test_embeddings_float_and_base64(mesh: OpenAIMesh) -> None:
    api = client(mesh, "carol")
    floats = api.embeddings.create(
        model=EMBEDDER, input=["a cat", "a dog"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 384
    assert floats.usage.prompt_tokens > 0
    assert floats.usage.total_tokens == floats.usage.prompt_tokens
    single = api.embeddings.create(model=EMBEDDER, input="a cat")  # the SDK asks for base64
    assert single.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    raw = httpx.post(
        f"{mesh.base_url}/embeddings",
        json={"model": EMBEDDER, "input": "a cat", "encoding_format": "base64"},
        headers={"authorization": f"Bearer {mesh.keys['carol']}"},
        timeout=30,
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    values = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert values == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_models(mesh: OpenAIMesh) -> None:
    api = client(mesh, "bob")
    ids = [m.id for m in api.models.list()]
    assert MODEL in ids and EMBEDDER in ids
    assert api.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("no-such-model")


def test_memory_two_turn_chat(mesh: OpenAIMesh) -> None:
    api = client(mesh)
    memory = {"llmesh": {"session_id": "openai-memory-1", "recall": {"k": 3}}}
    first = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "my name is Zed"}],
        max_tokens=4,
        extra_body=memory,
    )
    assert first.model_extra is not None
    assert first.model_extra["llmesh"]["session_version"] == 1
    assert first.model_extra["llmesh"]["history_messages"] == 0
    second = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "what is my name?"}],
        max_tokens=4,
        extra_body=memory,
    )
    assert second.model_extra is not None
    assert second.model_extra["llmesh"]["history_messages"] == 2  # the first turn came back
    assert second.model_extra["llmesh"]["session_version"] == 2
    with grpc.insecure_channel(mesh.gateway) as channel:
        session = gateway_pb2_grpc.GatewayServiceStub(channel).GetSession(
            gateway_pb2.GetSessionRequest(session_id="openai-memory-1"),
            metadata=(("authorization", f"Bearer {mesh.keys['alice']}"),),
            timeout=10,
        )
    assert [m.content for m in session.messages][::2] == ["my name is Zed", "what is my name?"]


def test_tenant_isolation(mesh: OpenAIMesh) -> None:
    body = {"llmesh": {"session_id": "shared-name", "disable_recall": True}}
    ask = [{"role": "user", "content": "remember the launch code"}]
    alice = client(mesh, "alice").chat.completions.create(
        model=MODEL, messages=ask, max_tokens=2, extra_body=body
    )
    assert alice.model_extra is not None and alice.model_extra["llmesh"]["session_version"] == 1
    # bob (tenant globex) names the same session: his own, empty one.
    bob = client(mesh, "bob").chat.completions.create(
        model=MODEL, messages=ask, max_tokens=2, extra_body=body
    )
    assert bob.model_extra is not None
    assert bob.model_extra["llmesh"]["history_messages"] == 0
    assert bob.model_extra["llmesh"]["session_version"] == 1
    # carol shares alice's tenant (acme): she continues alice's session.
    carol = client(mesh, "carol").chat.completions.create(
        model=MODEL, messages=ask, max_tokens=2, extra_body=body
    )
    assert carol.model_extra is not None
    assert carol.model_extra["llmesh"]["history_messages"] == 2
    assert carol.model_extra["llmesh"]["session_version"] == 2


def _error(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


def test_bad_key_is_401(mesh: OpenAIMesh) -> None:
    api = client(mesh, "llmesh_not-a-real-key")
    err = _error(lambda: api.chat.completions.create(model=MODEL, messages=HELLO))
    assert isinstance(err, openai.AuthenticationError) and err.status_code == 401
    assert err.body["type"] == "authentication_error"  # type: ignore[index]
    missing = httpx.get(f"{mesh.base_url}/models", timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_credentials"


def test_user_key_on_admin_route_is_403(mesh: OpenAIMesh) -> None:
    url = f"{mesh.base_url}/llmesh/workers"
    user = httpx.get(url, headers={"authorization": f"Bearer {mesh.keys['bob']}"}, timeout=10)
    assert user.status_code == 403
    assert user.json()["error"]["type"] == "permission_error"
    assert user.json()["error"]["code"] == "role_required"
    admin = httpx.get(url, headers={"authorization": f"Bearer {mesh.keys['ops']}"}, timeout=10)
    assert admin.status_code == 200 and admin.json()["workers"]


def test_bad_fields_name_their_param(mesh: OpenAIMesh) -> None:
    api = client(mesh, "bob")
    err = _error(lambda: api.chat.completions.create(model=MODEL, messages=HELLO, temperature=2.5))
    assert err.status_code == 400 and isinstance(err, openai.BadRequestError)
    assert err.body["param"] == "temperature"  # type: ignore[index]  # the contract's rule
    assert err.body["code"] == "invalid_field"  # type: ignore[index]
    err = _error(
        lambda: api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a\x00b"}]
        )
    )
    assert err.body["param"] == "messages[0].content"  # type: ignore[index]
    err = _error(lambda: api.chat.completions.create(model=MODEL, messages=HELLO, n=2))
    assert err.body["param"] == "n" and "n=1" in err.message  # type: ignore[index]
    err = _error(
        lambda: api.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100000)
    )
    assert err.body["param"] == "max_tokens"  # type: ignore[index]
    err = _error(lambda: api.chat.completions.create(model="no-such-model", messages=HELLO))
    assert err.status_code == 404 and err.body["code"] == "model_not_found"  # type: ignore[index]
    big = httpx.post(
        f"{mesh.base_url}/chat/completions",
        content=b'{"messages": "' + b"x" * (9 * 1024 * 1024) + b'"}',
        headers={"authorization": f"Bearer {mesh.keys['bob']}"},
        timeout=30,
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_rate_limit_429_with_retry_after(mesh: OpenAIMesh) -> None:
    api = client(mesh, "rita")
    # 30 cheap calls a minute with a 10 s burst: the sixth call at once is refused.
    for _ in range(5):
        api.models.list()
    err = _error(api.models.list)
    assert isinstance(err, openai.RateLimitError) and err.status_code == 429
    assert int(err.response.headers["retry-after"]) >= 1
    assert int(err.response.headers["retry-after-ms"]) > 0
    assert err.body["code"] == "rate_limited"  # type: ignore[index]
    # Another principal is not affected.
    assert client(mesh, "bob").models.list().data


def _worker_stats(mesh: OpenAIMesh) -> inference_pb2.StatsResponse:
    with grpc.insecure_channel(mesh.worker) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return stub.Stats(inference_pb2.StatsRequest(), timeout=5)


def test_deadline_from_the_timeout_header_is_504(mesh: OpenAIMesh) -> None:
    api = client(mesh, "bob")
    for seed in range(5):
        started = time.monotonic()
        try:
            api.completions.create(
                model=MODEL, prompt="a long story", max_tokens=1000, temperature=1.0, seed=seed,
                extra_headers={"x-request-timeout": "0.25"},
            )  # fmt: skip
        except openai.APIStatusError as err:
            assert err.status_code == 504 and err.body["type"] == "timeout_error"  # type: ignore[index]
            assert time.monotonic() - started < 2.0
            return
        # finished within 0.25 s (an early end of sequence): try a longer one
    pytest.fail("no generation outlasted its 0.25 s deadline")


def test_completions_max_tokens_defaults_to_16(mesh: OpenAIMesh) -> None:
    api = client(mesh, "alice")
    reply = api.completions.create(model=MODEL, prompt="once upon", temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens == 16  # OpenAI's default
    assert reply.choices[0].finish_reason == "length"
    chunks = list(
        api.completions.create(
            model=MODEL,
            prompt="once upon",
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply.choices[0].text


# Deadlines for a stream that must start (first event) before its deadline and still be
# generating when it passes: 1000 tokens at >= 5 ms a step (the mesh's decode_delay_ms)
# take over 5 s. A busy machine that sends nothing within the first gets the next.
MID_STREAM_DEADLINES_S = ("1", "2", "4")
LONG_STORY = {"max_tokens": 1000, "temperature": 1.0}


def test_deadline_mid_stream_is_an_error_event_the_sdk_raises(mesh: OpenAIMesh) -> None:
    api = client(mesh, "alice")
    for attempt, deadline in enumerate(MID_STREAM_DEADLINES_S):
        request_id = f"openai-mid-stream-{attempt}"
        try:
            stream = api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a long story"}],
                seed=attempt, stream=True, **LONG_STORY,  # type: ignore[arg-type]
                extra_headers={"x-request-timeout": deadline, "x-request-id": request_id},
            )  # fmt: skip
        except openai.APIStatusError as err:  # the deadline passed before the first event
            assert err.status_code == 504 and err.body["type"] == "timeout_error"  # type: ignore[index]
            continue
        text = []
        try:
            for chunk in stream:
                text.append(chunk.choices[0].delta.content or "")
        except openai.APIError as err:
            # Raised from the error event: a plain APIError (the status was 200), with
            # our error shape as its body and fields.
            assert not isinstance(err, openai.APIStatusError), err
            assert isinstance(err.body, dict)
            assert set(err.body) >= {"message", "type", "param", "code"}, err.body
            assert (err.type, err.param) == ("timeout_error", None)
            assert err.code == err.body["code"] and err.code
            assert err.message == err.body["message"] and "deadline" in err.message
            assert "".join(text), "the error came before any text"

            def gone(rid: str = request_id) -> bool:  # the generation stopped upstream too
                return rid not in [r.request_id for r in _worker_stats(mesh).requests]

            wait_until(gone, timeout_s=10, what="the worker dropping the expired request")
            return
        # Finished within the deadline (an early end of sequence): try a longer one.
    pytest.fail("no stream was still running when its deadline passed")


def test_mid_stream_error_event_on_the_wire(mesh: OpenAIMesh) -> None:
    for attempt, deadline in enumerate(MID_STREAM_DEADLINES_S):
        with httpx.stream(
            "POST",
            f"{mesh.base_url}/chat/completions",
            json={"model": MODEL, "messages": HELLO, "stream": True, "seed": attempt,
                  **LONG_STORY},
            headers={"authorization": f"Bearer {mesh.keys['alice']}",
                     "x-request-timeout": deadline},
            timeout=60,
        ) as response:  # fmt: skip
            lines = [line for line in response.iter_lines() if line]
        if response.status_code == 504:  # the deadline passed before the first event
            assert json.loads(lines[0])["error"]["type"] == "timeout_error"
            continue
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        if lines[-1] == "data: [DONE]":
            continue  # finished within the deadline: try a longer one
        assert all(line.startswith("data: ") for line in lines), lines
        assert "data: [DONE]" not in lines  # the error event is the end
        *chunks, last = [json.loads(line.removeprefix("data: ")) for line in lines]
        error = last["error"]
        assert set(last) == {"error"}
        assert error["type"] == "timeout_error" and error["param"] is None
        assert isinstance(error["message"], str) and isinstance(error["code"], str)
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        return
    pytest.fail("no stream was still running when its deadline passed")


def test_client_disconnect_cancels_the_generation(mesh: OpenAIMesh) -> None:
    api = client(mesh, "carol")
    for attempt in range(5):
        request_id = f"openai-cancel-{attempt}"
        before = _worker_stats(mesh)
        stream = api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"a long story {attempt}"}],
            max_tokens=1000,
            temperature=1.0,
            seed=attempt,
            stream=True,
            extra_headers={"x-request-id": request_id},
        )
        next(iter(stream))
        active = [r.request_id for r in _worker_stats(mesh).requests]
        stream.close()  # the client goes away mid-stream
        if request_id not in active:
            continue  # finished already (early end of sequence): try a longer one

        def gone(rid: str = request_id) -> bool:
            return rid not in [r.request_id for r in _worker_stats(mesh).requests]

        wait_until(gone, timeout_s=5, what="the worker dropping the cancelled request")
        after = _worker_stats(mesh)
        assert after.requests_cancelled_total > before.requests_cancelled_total
        return
    pytest.fail("no generation stayed active long enough to cancel")


def test_traceparent_continues(mesh: OpenAIMesh) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    client(mesh, "bob").chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=2,
        extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )

    def services() -> set[str] | None:
        seen = {svc for svc, s in list(mesh.collector.spans) if s.trace_id.hex() == trace_id}
        return seen if {"openai", "gateway", "inference"} <= seen else None

    wait_until(services, timeout_s=15, what="the caller's trace in door, gateway and worker")


def test_health_and_metrics(mesh: OpenAIMesh) -> None:
    base = f"http://{mesh.local.address('openai')}"
    assert httpx.get(f"{base}/health", timeout=5).json()["status"] == "SERVING"
    assert httpx.get(f"{base}/health/live", timeout=5).status_code == 200
    text = httpx.get(f"{base}/metrics", timeout=5).text
    assert "http_server_duration" in text and 'http_route="/v1/chat/completions"' in text


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_official_node_sdk(mesh: OpenAIMesh) -> None:
    env = {
        **os.environ,
        "LLMESH_OPENAI_URL": mesh.base_url,
        "LLMESH_KEYS": json.dumps({"dave": mesh.keys["dave"]}),
        "LLMESH_MODEL": MODEL,
    }
    done = subprocess.run(
        ["node", "--test", str(NODE_TESTS)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 5" in done.stdout


def doc_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of docs/openai.md, with the page's local URL and
    default model swapped for this mesh's."""
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_docs_examples_run(mesh: OpenAIMesh) -> None:
    env = {
        **os.environ,
        "OPENAI_BASE_URL": mesh.base_url,
        "OPENAI_API_KEY": mesh.keys["carol"],
        "LLMESH_HOME": str(mesh.local.home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }

    def run(argv: list[str], code: str) -> str:
        code = code.replace("http://127.0.0.1:8080/v1", mesh.base_url)
        code = code.replace("tiny-llama-small", MODEL)
        done = subprocess.run(
            [*argv, code], check=False, env=env, capture_output=True, text=True, timeout=120,
            cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
        return done.stdout

    (python,) = doc_blocks("python")
    out = run([sys.executable, "-c"], python).split()
    assert out[-3:] == ["0", "2", "384"]  # history before/after the first turn, dimensions
    if shutil.which("node") is not None:
        (js,) = doc_blocks("js")
        assert run(["node", "--input-type=module", "-e"], js).strip().endswith("1")
    # The shell blocks in order, as one script: the key comes from `llmesh keys create`.
    script = "set -euo pipefail\n" + "\n".join(doc_blocks("sh"))
    out = run(["bash", "-c"], script)
    assert "data: [DONE]" in out and f'"id":"{MODEL}"' in out
