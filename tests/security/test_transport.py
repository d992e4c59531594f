"""Transport rules of every service: a non-loopback bind without TLS is refused at start
(each service's real entry point, ``llmesh serve <service>``), and a request larger than
the message limit is RESOURCE_EXHAUSTED with the reason MESSAGE_TOO_LARGE (the kernel's
interceptor, on every server; gRPC alone would answer without details).

libs/tests/test_kernel_server.py checks the bind rule on the kernel's echo server; this
holds each service's own entry point to it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from e2etest.gateway_mesh import MODEL, Mesh
from fuzz.report import record

from llmesh.testing.rpc import error_details
from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, gateway_pb2, inference_pb2, memory_pb2, registry_pb2
from security.calls import bearer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LIMIT = 8 * 1024 * 1024  # max_message_bytes, the default of every service


def _serve(service: str, host: str, tmp: Path, models_dir: Path) -> tuple[int, str, int]:
    port = free_port()
    extra: list[str] = []
    if service == "inference":
        extra = ["--models-dir", str(models_dir), "--default-model", MODEL, "--no-embeddings"]
    if service in ("gateway", "memory"):
        extra = ["--data-dir", str(tmp / service)]
    command = [sys.executable, "-m", "llmesh_cli.main", "serve", service, "--host", host]
    proc = subprocess.run(
        [*command, "--port", str(port), "--log-format", "json", *extra],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "LLMESH_HOME": str(tmp)},
    )
    return proc.returncode, proc.stdout + proc.stderr, port


@pytest.mark.parametrize(
    ("service", "host"),
    [
        ("registry", "0.0.0.0"),
        ("memory", "0.0.0.0"),
        ("inference", "0.0.0.0"),
        ("gateway", "0.0.0.0"),
        ("gateway", "::"),
    ],
)
def test_a_non_loopback_bind_without_tls_is_refused(
    service: str, host: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    code, output, port = _serve(service, host, tmp_path, tiny_model_dir)
    assert code != 0, output[-2000:]
    assert "without TLS" in output, output[-2000:]
    with socket.socket() as sock:  # it never listened
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def _too_big(mesh: Mesh) -> dict[str, tuple[str, str, bytes, tuple[tuple[str, str], ...]]]:
    """Per service: address, method and a valid request just past the limit."""
    text = "a" * (LIMIT + 1024)
    registry = mesh.registry
    inference = f"127.0.0.1:{mesh.workers['w0'].port}"
    memory = next(f"127.0.0.1:{p.port}" for p in mesh.procs if p.name == "memory")
    return {
        "gateway": (
            mesh.gateway,
            "/llmesh.v1.GatewayService/Remember",
            gateway_pb2.RememberRequest(
                memory=common_pb2.MemoryDraft(text=text)
            ).SerializeToString(),
            bearer(mesh.keys["alice"]),
        ),
        "registry": (
            registry,
            "/llmesh.v1.RegistryService/Register",
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(worker_id="big", address=text)
            ).SerializeToString(),
            (),
        ),
        "memory": (
            memory,
            "/llmesh.v1.MemoryService/Remember",
            memory_pb2.MemoryServiceRememberRequest(
                namespace="big", memory=common_pb2.MemoryDraft(text=text)
            ).SerializeToString(),
            (),
        ),
        "inference": (
            inference,
            "/llmesh.v1.InferenceService/Embed",
            inference_pb2.InferenceServiceEmbedRequest(texts=[text]).SerializeToString(),
            (),
        ),
    }


def test_oversized_requests_are_resource_exhausted_with_a_reason(security_mesh: Mesh) -> None:
    outcomes: dict[str, str] = {}
    for service, (address, path, payload, metadata) in _too_big(security_mesh).items():
        assert len(payload) > LIMIT
        with grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as caught:
                call(payload, metadata=metadata, timeout=60)
            error = caught.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (service, error)  # type: ignore[attr-defined]
            info = error_details(error)["error_info"]
            assert info.reason == "MESSAGE_TOO_LARGE", service
            assert info.metadata["limit_bytes"] == str(LIMIT)
            assert info.metadata["size_bytes"] == str(len(payload))
            assert "retry_info" not in error_details(error)  # not retryable as is
            outcomes[service] = f"{error.code().name} {info.reason}"  # type: ignore[attr-defined]
            # The server goes on serving: a small call on the same channel still answers.
            small = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as again:
                small(b"\xff", metadata=metadata, timeout=30)  # malformed, but answered
            assert again.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    record("oversized", {"limit_bytes": LIMIT, "outcomes": outcomes})
