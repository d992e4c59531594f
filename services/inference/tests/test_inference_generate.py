"""Generate over real gRPC on the tiny model: streaming, sampling, seeds, stops, batching."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from llmesh.v1 import common_pb2, inference_pb2

MODEL = "tiny-llama-test"
PROMPT = "The mesh routes every request"


def request(
    prompt: str = PROMPT, model: str = "", **sampling: Any
) -> inference_pb2.InferenceServiceGenerateRequest:
    return inference_pb2.InferenceServiceGenerateRequest(
        input=common_pb2.GenerationInput(
            model=model, prompt=prompt, sampling=common_pb2.SamplingParams(**sampling)
        )
    )


async def collect(
    stub: Any, req: inference_pb2.InferenceServiceGenerateRequest
) -> list[inference_pb2.InferenceServiceGenerateResponse]:
    return [chunk async for chunk in stub.Generate(req, timeout=60)]


def tokens(chunks: list[inference_pb2.InferenceServiceGenerateResponse]) -> list[int]:
    return [t for c in chunks for t in c.delta.token_ids]


def text(chunks: list[inference_pb2.InferenceServiceGenerateResponse]) -> str:
    return "".join(c.delta.text for c in chunks)


async def test_streams_chunks_with_every_sampling_option(start_worker: Any) -> None:
    async with start_worker() as w:
        req = request(temperature=0.9, top_p=0.8, top_k=40, max_tokens=12, seed=7)
        chunks = await collect(w.stub, req)
    events = [c.WhichOneof("event") for c in chunks]
    assert events[0] == "start" and events[-1] == "done"
    assert set(events[1:-1]) == {"delta"} and len(events) >= 4, "tokens are streamed"
    assert chunks[0].start.model == MODEL
    last = chunks[-1].done
    assert last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert len(tokens(chunks)) == 12
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens > 0
    assert 0 < last.usage.time_to_first_token_ms <= last.usage.total_time_ms
    assert last.usage.queue_time_ms >= 0


async def test_seed_gives_same_output_alone_and_in_a_batch(start_worker: Any) -> None:
    async with start_worker() as w:
        seeded = request(temperature=1.0, max_tokens=24, seed=1234)
        alone = tokens(await collect(w.stub, seeded))
        again = tokens(await collect(w.stub, seeded))
        other_seed = tokens(await collect(w.stub, request(temperature=1.0, max_tokens=24, seed=9)))
        # The same request while three others with other prompts share its decode steps.
        others = [
            collect(
                w.stub, request(prompt=f"Another prompt number {i}", temperature=1.0, max_tokens=40)
            )
            for i in range(3)
        ]
        results = await asyncio.gather(collect(w.stub, seeded), *others)
        stats = await w.stats()
    assert alone == again
    assert alone != other_seed
    assert tokens(results[0]) == alone
    assert stats.decode_steps_total < stats.tokens_generated_total


async def test_greedy_is_deterministic_and_top_k_one_is_greedy(start_worker: Any) -> None:
    async with start_worker() as w:
        greedy = tokens(await collect(w.stub, request(temperature=0.0, max_tokens=16)))
        top1 = tokens(
            await collect(w.stub, request(temperature=1.5, top_k=1, max_tokens=16, seed=3))
        )
        nucleus = tokens(
            await collect(w.stub, request(temperature=1.0, top_p=1e-6, max_tokens=16, seed=5))
        )
    assert greedy == top1 == nucleus


async def test_stop_sequence_ends_generation_before_it(start_worker: Any) -> None:
    async with start_worker() as w:
        full = text(await collect(w.stub, request(temperature=0.0, max_tokens=40)))
        visible = full.replace("\ufffd", "")
        assert len(visible) > 10, full
        stop = visible[6:9]
        cut = full.index(stop)
        chunks = await collect(w.stub, request(temperature=0.0, max_tokens=40, stop=["zzzq", stop]))
    assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE
    assert text(chunks) == full[:cut]
    assert stop not in text(chunks)


async def test_chat_messages_are_rendered_with_the_chat_template(
    start_worker: Any, tiny_model_dir: Any
) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_model_dir / MODEL / "tokenizer.json"))
    rendered = "<|system|>\nBe brief.<|end|>\n<|user|>\nHello there<|end|>\n<|assistant|>\n"
    expected = len(tok.encode(rendered).ids)
    async with start_worker() as w:
        req = inference_pb2.InferenceServiceGenerateRequest(
            input=common_pb2.GenerationInput(
                messages=common_pb2.ChatMessages(
                    messages=[
                        common_pb2.ChatMessage(
                            role=common_pb2.CHAT_ROLE_SYSTEM, content="Be brief."
                        ),
                        common_pb2.ChatMessage(
                            role=common_pb2.CHAT_ROLE_USER, content="Hello there"
                        ),
                    ]
                ),
                sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0),
            )
        )
        chunks = await collect(w.stub, req)
    assert chunks[-1].done.usage.prompt_tokens == expected
    assert chunks[-1].done.usage.completion_tokens == 4


async def test_concurrent_requests_share_decode_steps(start_worker: Any) -> None:
    n = 120
    async with start_worker() as w:
        before = await w.stats()
        results = await asyncio.gather(
            collect(w.stub, request(prompt="first prompt", temperature=0, max_tokens=n)),
            collect(
                w.stub, request(prompt="second, different prompt", temperature=0, max_tokens=n)
            ),
        )
        after = await w.stats()
    assert [len(tokens(r)) for r in results] == [n, n]
    steps = after.decode_steps_total - before.decode_steps_total
    generated = after.tokens_generated_total - before.tokens_generated_total
    assert generated == 2 * n
    # Alone they would need 2n steps; sharing steps needs about n.
    assert steps <= 1.5 * n, f"{steps} decode steps for two {n}-token requests"
    assert after.requests_completed_total - before.requests_completed_total == 2


async def test_errors_are_precise(
    start_worker: Any, rpc_details: Callable[[grpc.aio.AioRpcError], dict[str, Any]]
) -> None:
    async with start_worker() as w:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await collect(w.stub, request(model="no-such-model"))
        with pytest.raises(grpc.aio.AioRpcError) as too_long:
            await collect(w.stub, request(prompt="word " * 3000, max_tokens=4))
        with pytest.raises(grpc.aio.AioRpcError) as bad_sampling:
            await collect(w.stub, request(top_p=1.5, temperature=3.0))
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await collect(w.stub, inference_pb2.InferenceServiceGenerateRequest())
        # The worker is still fine afterwards.
        ok = await collect(w.stub, request(max_tokens=2))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_details(missing.value)["ErrorInfo"].reason == "MODEL_NOT_FOUND"
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in rpc_details(too_long.value)["BadRequest"].field_violations]
    assert fields == ["input.prompt"]
    assert bad_sampling.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in rpc_details(bad_sampling.value)["BadRequest"].field_violations]
    assert fields == ["input.sampling.temperature", "input.sampling.top_p"]
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(tokens(ok)) == 2


async def test_generation_stops_when_the_context_is_full(
    start_worker: Any, tiny_model_dir: Any
) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_model_dir / MODEL / "tokenizer.json"))
    # The longest repetition that leaves a few tokens of the 1024-token context.
    prompt = max(
        ("the mesh " * n for n in range(200, 300)),
        key=lambda p: len(tok.encode(p).ids) if len(tok.encode(p).ids) <= 1015 else 0,
    )
    used = len(tok.encode(prompt).ids)
    assert 1000 < used <= 1015, used
    async with start_worker() as w:
        chunks = await collect(w.stub, request(prompt=prompt, temperature=0, max_tokens=100))
        with pytest.raises(grpc.aio.AioRpcError) as bad_role:
            await collect(
                w.stub,
                inference_pb2.InferenceServiceGenerateRequest(
                    input=common_pb2.GenerationInput(
                        messages=common_pb2.ChatMessages(
                            messages=[common_pb2.ChatMessage(content="no role")]
                        )
                    )
                ),
            )
    assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_CONTEXT_FULL
    assert chunks[-1].done.usage.prompt_tokens == used
    assert len(tokens(chunks)) == 1024 - used
    assert bad_role.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_end_of_sequence_finishes_without_text(
    start_worker: Any, models_copy: Callable[[list[str]], Any]
) -> None:
    import json

    from safetensors.numpy import load_file, save_file

    root = models_copy(["eos-model"])
    folder = root / "eos-model"
    weights = load_file(str(folder / "model.safetensors"))
    eos = json.loads((folder / "config.json").read_text())["eos_token_id"][0]
    # Residual dimension 0 is a constant positive feature of the tiny models: give the
    # end-of-sequence row a large positive weight on it, so it is always the argmax.
    weights["lm_head.weight"][eos, 0] = 1000.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "mlx"})
    async with start_worker(models_dir=root, default_model="eos-model") as w:
        chunks = await collect(w.stub, request(temperature=0, max_tokens=20))
    assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_EOS
    assert chunks[-1].done.usage.completion_tokens == 1
    assert tokens(chunks) == [] and text(chunks) == ""
