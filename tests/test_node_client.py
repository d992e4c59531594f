"""The generated Node stubs speak the same wire format as the Python ones, find the
same rule violations, and the package's types check (``tsc``)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llmesh.v1 import gateway_pb2

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "clients" / "node" / "tools" / "smoke.js"
TSC = ROOT / "node_modules" / ".bin" / "tsc"

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
    assert dict(request.recall.metadata_filter.entries) == {"topic": "ops"}
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
    assert generate.input.WhichOneof("content") == "messages"
    assert [m.content for m in generate.input.messages.messages] == ["hi"]
    assert generate.session_id == "s-1"
    key = gateway_pb2.CreateApiKeyRequest.FromString(base64.b64decode(out["create_key_b64"]))
    assert key.ttl.ToSeconds() == 3600 and key.request_id == "req-1"
    assert out["chat_event"] == {"case": "done", "sessionVersion": 3, "replayed": True}


async def test_node_client_calls_a_real_registry_over_grpc() -> None:
    import asyncio

    import grpc

    from llmesh.testing.inprocess import serving
    from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
    from llmesh_registry.settings import RegistrySettings
    from llmesh_registry.wiring import SERVICE_NAMES, wire

    settings = RegistrySettings(port=0)
    async with serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as registry:
        async with grpc.aio.insecure_channel(registry.address) as channel:
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
            registry.address,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
    workers = json.loads(out)["workers"]
    assert workers == [
        {"id": "w-node", "address": "127.0.0.1:50054", "state": common_pb2.WORKER_STATE_READY}
    ]


def _node(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        ["node", str(SMOKE), *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def test_node_and_python_find_the_same_violations() -> None:
    """@bufbuild/protovalidate in Node and the kernel's validator read the same rules."""
    from google.protobuf import symbol_database

    from llmesh.kernel.validation import RequestValidator

    validator = RequestValidator()
    cases = _node("validate")["validated"]
    assert len(cases) == 6
    for case in cases:
        cls = symbol_database.Default().GetSymbol(case["type"])
        message = cls.FromString(base64.b64decode(case["b64"]))
        python = sorted((v.field, v.reason, v.description) for v in validator.violations(message))
        node = sorted((v["field"], v["rule"], v["message"]) for v in case["violations"])
        assert node == python, case["type"]
        assert node, case["type"]


async def test_node_client_refuses_what_the_python_server_refuses() -> None:
    """The same invalid Register: refused in Node before sending, and by the registry."""
    import asyncio

    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from llmesh.testing.inprocess import serving
    from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
    from llmesh_registry.settings import RegistrySettings
    from llmesh_registry.wiring import SERVICE_NAMES, wire

    settings = RegistrySettings(port=0)
    async with serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served:
        node = await asyncio.to_thread(_node, "register-invalid", served.address)
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Register(
                    registry_pb2.RegisterRequest(
                        worker=common_pb2.WorkerInfo(worker_id="-w", address="nowhere")
                    ),
                    timeout=5,
                )
            listed = await stub.ListWorkers(registry_pb2.RegistryServiceListWorkersRequest())
    refused = node["refused"]
    assert refused is not None and refused["code"] == 3  # Code.InvalidArgument
    assert not listed.workers  # Node never sent it; Python's was refused
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
    server = sorted((v.field, v.reason) for v in bad.field_violations)
    client = sorted((v["field"], v["rule"]) for v in refused["violations"])
    assert (
        client
        == server
        == [
            ("worker.address", "string.pattern"),
            ("worker.worker_id", "string.pattern"),
        ]
    )


def test_node_unit_tests_pass() -> None:
    """The wrapper's own tests, no server needed (the mesh suite is test_clients_mesh.py)."""
    done = subprocess.run(
        ["node", "--test", str(ROOT / "clients" / "node" / "test" / "unit.test.js")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_node_client_types_check() -> None:
    """index.d.ts and a typed example compile under strict TypeScript (pinned tsc)."""
    done = subprocess.run(
        [str(TSC), "-p", str(ROOT / "clients" / "node")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_node_package_exposes_no_internal_service() -> None:
    """The package is the public API: no registry, memory or inference client."""
    out = subprocess.run(
        [
            "node",
            "--input-type=module",
            "-e",
            "const m = await import('@llmesh/client');"
            "const c = m.createLlmeshClient();"
            "console.log(JSON.stringify({exports: Object.keys(m), clients: Object.keys(c)}))",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found = json.loads(out)
    assert found["clients"] == ["gateway", "admin", "health", "transport"]
    internal = ("Registry", "MemoryService", "InferenceService")
    assert not [name for name in found["exports"] if name.startswith(internal)]
    assert {"GatewayService", "AdminService", "Health", "BadRequestSchema"} <= set(found["exports"])
