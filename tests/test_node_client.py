"""The generated Node stubs speak the same wire format as the Python ones."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llmesh.v1 import gateway_pb2

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "clients" / "node" / "smoke.js"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def test_node_encodes_what_python_decodes() -> None:
    out = subprocess.run(
        ["node", str(SMOKE)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    request = gateway_pb2.ChatRequest.FromString(
        base64.b64decode(json.loads(out)["chat_request_b64"])
    )
    assert request.session_id == "s-1"
    assert request.message == "héllo from node"
    assert request.history_limit == 7
    assert request.recall.k == 3
    assert request.recall.HasField("semantic_weight") and request.recall.semantic_weight == 0.5
    assert dict(request.recall.metadata_filter) == {"topic": "ops"}
    assert request.disable_recall


def test_node_and_python_agree_on_the_v1_shapes() -> None:
    done = gateway_pb2.ChatResponse(done=gateway_pb2.ChatDone(session_version=3, replayed=True))
    encoded = base64.b64encode(done.SerializeToString()).decode()
    out = json.loads(
        subprocess.run(
            ["node", str(SMOKE), "decode-chat", encoded],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    generate = gateway_pb2.GenerateStreamRequest.FromString(
        base64.b64decode(out["generate_request_b64"])
    )
    assert generate.WhichOneof("input") == "messages"
    assert [m.content for m in generate.messages.messages] == ["hi"]
    key = gateway_pb2.CreateApiKeyRequest.FromString(base64.b64decode(out["create_key_b64"]))
    assert key.ttl.ToSeconds() == 3600 and key.request_id == "req-1"
    assert out["chat_event"] == {"case": "done", "sessionVersion": 3, "replayed": True}


async def test_node_client_calls_a_real_registry_over_grpc() -> None:
    import asyncio

    import grpc

    from llmesh.kernel.server import ServiceHost
    from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
    from llmesh_registry.servicer import SERVICE_NAME
    from llmesh_registry.settings import RegistrySettings
    from llmesh_registry.wiring import wire

    settings = RegistrySettings(port=0)
    host = ServiceHost(settings, service_names=[SERVICE_NAME])
    async with wire(host, settings):
        port = await host.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await registry_pb2_grpc.RegistryServiceStub(channel).Register(
                    registry_pb2.RegisterRequest(
                        worker=common_pb2.WorkerInfo(
                            worker_id="w-node",
                            address="127.0.0.1:50054",
                            capacity=2,
                            state=common_pb2.WORKER_STATE_READY,
                        )
                    ),
                    timeout=5,
                )
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(SMOKE),
                "registry",
                f"127.0.0.1:{port}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
            assert proc.returncode == 0, err.decode()
        finally:
            await host.stop(0)
    workers = json.loads(out)["workers"]
    assert workers == [
        {"id": "w-node", "address": "127.0.0.1:50054", "state": common_pb2.WORKER_STATE_READY}
    ]
