"""Model cache: LoadModel/UnloadModel/ListModels, LRU eviction, idle unload, readiness."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, inference_pb2
from llmesh_inference.tiny import init_tiny

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def load(w: Any, name: str) -> inference_pb2.InferenceServiceLoadModelResponse:
    reply: inference_pb2.InferenceServiceLoadModelResponse = await w.stub.LoadModel(
        inference_pb2.InferenceServiceLoadModelRequest(model=name)
    )
    return reply


async def loaded(w: Any) -> list[str]:
    return sorted(m.name for m in (await w.stats()).loaded_models)


async def test_lru_eviction_keeps_the_default_model(
    start_worker: Any, models_copy: Callable[[list[str]], Path]
) -> None:
    root = models_copy(["a", "b", "c"])
    async with start_worker(models_dir=root, default_model="a", max_loaded_models=2) as w:
        assert await loaded(w) == ["a"]
        first = await load(w, "b")
        assert first.model.loaded and first.model.parameters > 0 and first.load_time_ms > 0
        again = await load(w, "b")
        assert again.load_time_ms == 0 and list(again.evicted) == []
        third = await load(w, "c")
        assert list(third.evicted) == ["b"]  # "a" is the default: never evicted
        assert await loaded(w) == ["a", "c"]
        # A request naming an unloaded model loads it (evicting the LRU idle one).
        chunks = [
            c
            async for c in w.stub.Generate(
                inference_pb2.InferenceServiceGenerateRequest(
                    input=common_pb2.GenerationInput(
                        model="b",
                        prompt="hi",
                        sampling=common_pb2.SamplingParams(max_tokens=3, temperature=0),
                    )
                )
            )
        ]
        assert chunks[0].start.model == "b"
        assert await loaded(w) == ["a", "b"]
        listing = await w.stub.ListModels(inference_pb2.InferenceServiceListModelsRequest())
        assert listing.default_model == "a"
        assert {m.name: m.loaded for m in listing.models} == {"a": True, "b": True, "c": False}


async def test_memory_budget_limits_what_fits(
    start_worker: Any,
    models_copy: Callable[[list[str]], Path],
    rpc_details: Callable[[grpc.aio.AioRpcError], dict[str, Any]],
) -> None:
    root = models_copy(["a", "b"])
    big = root / "big"
    init_tiny(big, size="small")
    # The test model needs ~0.55 MiB, the small one ~16 MiB: a 2 MiB budget fits the first.
    async with start_worker(models_dir=root, default_model="a", memory_budget_mb=2) as w:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await load(w, "big")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await load(w, "nope")
        assert (await load(w, "b")).model.loaded
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_details(err.value)["ErrorInfo"].reason == "MODEL_TOO_LARGE"
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_idle_models_unload(
    start_worker: Any, models_copy: Callable[[list[str]], Path]
) -> None:
    root = models_copy(["a", "b"])
    async with start_worker(models_dir=root, default_model="a", idle_unload_s=0.3) as w:
        await load(w, "b")
        assert await loaded(w) == ["a", "b"]

        async def only_default() -> bool:
            return bool(await loaded(w) == ["a"])

        await await_until(only_default, timeout_s=10, what="idle model unloaded")


async def test_unload_model(start_worker: Any, models_copy: Callable[[list[str]], Path]) -> None:
    root = models_copy(["a", "b"])
    async with start_worker(models_dir=root, default_model="a") as w:
        await load(w, "b")
        released = await w.stub.UnloadModel(
            inference_pb2.InferenceServiceUnloadModelRequest(model="b")
        )
        assert released.released_bytes > 0
        with pytest.raises(grpc.aio.AioRpcError) as not_loaded:
            await w.stub.UnloadModel(inference_pb2.InferenceServiceUnloadModelRequest(model="b"))
        with pytest.raises(grpc.aio.AioRpcError) as default:
            await w.stub.UnloadModel(inference_pb2.InferenceServiceUnloadModelRequest(model="a"))
        assert await w.health_status("readiness") == SERVING
        await w.stub.UnloadModel(
            inference_pb2.InferenceServiceUnloadModelRequest(model="a", force=True)
        )
        assert await loaded(w) == []
        assert await w.health_status("readiness") == NOT_SERVING
    assert not_loaded.value.code() == grpc.StatusCode.NOT_FOUND
    assert default.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_readiness_flips_when_the_default_model_loads(
    start_worker: Any, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    async with start_worker(models_dir=root, default_model="late", wait_ready=False) as w:
        # The default model is not on disk yet: alive, but not ready.
        await w.worker.engine.call(lambda: None)
        assert await w.health_status("readiness") == NOT_SERVING
        assert await w.health_status("") == NOT_SERVING
        assert await w.health_status("liveness") == SERVING
        init_tiny(root / "late", size="test")
        await load(w, "late")
        assert await w.health_status("readiness") == SERVING
        assert await w.health_status("llmesh.v1.InferenceService") == SERVING


async def test_liveness_fails_while_the_mlx_thread_is_stuck(start_worker: Any) -> None:
    async with start_worker(stall_timeout_s=0.3) as w:
        release = threading.Event()
        stuck = w.worker.engine.call(lambda: release.wait(30))
        import asyncio

        task = asyncio.ensure_future(stuck)

        async def dead() -> bool:
            return bool(await w.health_status("liveness") == NOT_SERVING)

        try:
            await await_until(dead, timeout_s=10, what="liveness NOT_SERVING")
        finally:
            release.set()
        await task

        async def alive() -> bool:
            return bool(await w.health_status("liveness") == SERVING)

        await await_until(alive, timeout_s=10, what="liveness SERVING again")
