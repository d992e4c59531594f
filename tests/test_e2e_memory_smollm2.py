"""Memory that the default model uses, end to end on SmolLM2-135M-Instruct.

A real mesh (the ``llmesh up`` plan: registry, inference + registrar, memory, gateway)
serves the imported SmolLM2 with MiniLM embeddings. Fixed examples, greedy:

- a fact remembered through the gateway, then asked in a new session;
- a name said in turn 1 of a session (remembered with ``remember_message``), asked
  in turn 2 (from the history alone SmolLM2-135M tends to repeat its own previous
  reply instead; the recalled message in the context is what it answers from);
- the same questions without recall do not know the answer (the control).

The examples are ones where the old layout (memories in a system message) fails and the
"Context: ... Using the context, answer:" layout in the user's turn succeeds
(bench/memory_use, docs/memory.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

MODEL = "smollm2-135m-instruct"
FACTS = (
    "My dog is called Rex.",
    "My favourite colour is green.",
    "I work as a nurse.",
    "I live in Lyon.",
)


@pytest.fixture(scope="module")
def mesh(smollm2_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan

    home = tmp_path_factory.mktemp("smollm2-mesh")
    options = mesh_options(
        home,
        models_dir=smollm2_model_dir,
        default_model=MODEL,
        services=("registry", "inference", "registrar", "memory", "gateway"),
        # The engine of a fresh clone (llama.cpp only runs where `make llama-server` built it).
        env={
            "inference": {"LLMESH_INFERENCE_ENGINE": "mlx"},
            # These tests are about using memories, not the recall budget: on a loaded
            # machine the default 1.5 s cap leaves recall out (degraded) of some turns.
            "gateway": {"LLMESH_GATEWAY_CHAT__CONTEXT_CAP_S": "30"},
        },
    )
    with LocalMesh(build_plan(options), home=home) as running:
        running.start()
        yield running


@pytest.fixture
def gateway(mesh: Any) -> Iterator[tuple[Any, tuple[tuple[str, str], ...]]]:
    """A stub and a key of a fresh tenant (its own memories)."""
    key = mesh.create_key(role="user", tenant=f"t{uuid.uuid4().hex[:8]}")
    with grpc.insecure_channel(mesh.address("gateway")) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel), (("authorization", f"Bearer {key}"),)


def chat(gateway: Any, session: str, message: str, **fields: Any) -> tuple[str, list[str]]:
    stub, meta = gateway
    request = gateway_pb2.ChatRequest(
        session_id=session,
        message=message,
        sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=24),
        **fields,
    )
    texts, memory_ids = [], []
    for chunk in stub.Chat(request, metadata=meta, timeout=120):
        if chunk.WhichOneof("event") == "start":
            assert not chunk.start.recall_degraded, chunk.start.degraded_reason
            memory_ids = list(chunk.start.memory_ids)
        elif chunk.WhichOneof("event") == "delta":
            texts.append(chunk.delta.text)
    return "".join(texts), memory_ids


def test_a_remembered_fact_is_used(gateway: Any) -> None:
    stub, meta = gateway
    for text in FACTS:
        stored = stub.Remember(
            gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text=text)),
            metadata=meta,
            timeout=60,
        )
        assert stored.embedded, text
    for session, (question, answer) in enumerate(
        [("What is my dog's name?", "Rex"), ("What is my favourite colour?", "green")]
    ):
        reply, used = chat(gateway, f"fact-{session}", question)
        assert used, "recall found nothing"
        assert answer in reply.lower() or answer in reply, reply
        control, used = chat(gateway, f"control-{session}", question, disable_recall=True)
        assert not used and answer not in control.lower(), control


def test_a_name_said_in_turn_one_is_answered_in_turn_two(gateway: Any) -> None:
    first, _ = chat(gateway, "name-1", "My name is Ana.", remember_message=True)
    assert first
    reply, used = chat(gateway, "name-1", "What is my name?")
    assert used and "Ana" in reply, reply
