"""The Embed RPC wired to the MiniLM embedder on the MLX thread, and generation spans."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmesh.kernel.telemetry import setup_telemetry
from llmesh.v1 import common_pb2, inference_pb2


async def test_embed_rpc_ranks_a_paraphrase_above_an_unrelated_sentence(
    start_worker: Any,
) -> None:
    texts = [
        "How do I reset my password?",
        "What are the steps to change my password?",
        "The recipe needs two cups of flour.",
    ]
    async with start_worker(embeddings=True) as w:
        reply = await w.stub.Embed(inference_pb2.InferenceServiceEmbedRequest(texts=texts))
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await w.stub.Embed(inference_pb2.InferenceServiceEmbedRequest())
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await w.stub.Embed(
                inference_pb2.InferenceServiceEmbedRequest(texts=["x"], model="bert-huge")
            )
        listing = await w.stub.ListModels(inference_pb2.InferenceServiceListModelsRequest())
    assert reply.dimensions == 384 and reply.model == "all-minilm-l6-v2"
    assert reply.prompt_tokens > len(texts)
    vectors = np.array([e.values for e in reply.embeddings], dtype=np.float32)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    embedding = [m for m in listing.models if m.embedding]
    assert [m.name for m in embedding] == ["all-minilm-l6-v2"] and embedding[0].loaded


async def test_generate_records_queue_prefill_and_decode_spans(start_worker: Any) -> None:
    exporter = InMemorySpanExporter()
    setup_telemetry("inference-test", span_exporter=exporter)
    async with start_worker() as w:
        chunks = [
            c
            async for c in w.stub.Generate(
                inference_pb2.InferenceServiceGenerateRequest(
                    input=common_pb2.GenerationInput(
                        prompt="spans please", sampling=common_pb2.SamplingParams(max_tokens=5)
                    )
                ),
                metadata=(("x-request-id", "span-req"),),
            )
        ]
    assert chunks[-1].done.usage.completion_tokens == 5
    spans = {
        s.name: s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get("llmesh.request_id") == "span-req"
    }
    assert set(spans) == {"inference.queue_wait", "inference.prefill", "inference.decode"}
    queue, prefill, decode = (
        spans["inference.queue_wait"],
        spans["inference.prefill"],
        spans["inference.decode"],
    )
    times = [queue.start_time, prefill.start_time, decode.start_time, decode.end_time]
    assert None not in times and times == sorted(times)  # type: ignore[type-var]
    assert len({s.context.trace_id for s in spans.values()}) == 1
