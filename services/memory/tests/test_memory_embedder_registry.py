"""Memory finds embedders through the registry: two real MiniLM workers, one killed,
embeddings still work (failover), on a real registry and a real memory service."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.v1 import (
    common_pb2,
    memory_pb2,
    memory_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

pytestmark = pytest.mark.timeout(180)


async def _register(registry: str, worker_id: str, address: str) -> None:
    async with grpc.aio.insecure_channel(registry) as channel:
        await registry_pb2_grpc.RegistryServiceStub(channel).Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id=worker_id,
                    address=address,
                    capacity=4,
                    state=common_pb2.WORKER_STATE_READY,
                )
            ),
            timeout=5,
        )


async def test_embeddings_fail_over_to_another_registered_worker(
    tmp_path: Path, start_minilm: Callable[..., Any]
) -> None:
    from llmesh_memory import wiring as memory_wiring
    from llmesh_memory.settings import MemorySettings
    from llmesh_registry import wiring as registry_wiring
    from llmesh_registry.settings import RegistrySettings

    registry_settings = RegistrySettings(port=0, lease_ttl_ms=600_000, evict_after_ms=600_000)
    with contextlib.ExitStack() as workers:
        first = workers.enter_context(start_minilm(None))
        second_cm = start_minilm(None)
        second = second_cm.__enter__()
        try:
            async with serving(
                registry_settings,
                registry_wiring.SERVICE_NAMES,
                lambda host: registry_wiring.wire(host, registry_settings),
            ) as served_registry:
                registry = served_registry.address
                # A long lease: the killed worker stays READY in the registry, so only the
                # embedder's own failover keeps embeddings working.
                await _register(registry, "e0", first)
                await _register(registry, "e1", second)
                memory_settings = MemorySettings(
                    port=0,
                    data_dir=tmp_path,
                    embedder_target=None,
                    embedder_registry=registry,
                    embedder_cooldown_s=60,
                )
                async with (
                    serving(
                        memory_settings,
                        memory_wiring.SERVICE_NAMES,
                        lambda host: memory_wiring.wire(host, memory_settings),
                    ) as memory,
                    grpc.aio.insecure_channel(memory.address) as channel,
                ):
                    stub = memory_pb2_grpc.MemoryServiceStub(channel)

                    async def remember(text: str) -> bool:
                        reply = await stub.Remember(
                            memory_pb2.MemoryServiceRememberRequest(
                                namespace="t", memory=common_pb2.MemoryDraft(text=text)
                            ),
                            timeout=30,
                        )
                        return bool(reply.embedded)

                    await await_until(
                        lambda: remember(f"warm up {time.monotonic()}"),
                        timeout_s=30,
                        what="an embedding from a registered worker",
                    )
                    second_cm.__exit__(None, None, None)  # kill one worker
                    second_cm = contextlib.nullcontext(second)
                    results = [await remember(f"fact number {i} about tea") for i in range(6)]
                    assert all(results), results
                    hits = await stub.Recall(
                        memory_pb2.MemoryServiceRecallRequest(
                            namespace="t",
                            query="tea fact",
                            options=common_pb2.RecallOptions(k=3),
                        ),
                        timeout=30,
                    )
                    assert not hits.degraded and len(hits.hits) == 3
        finally:
            second_cm.__exit__(None, None, None)
