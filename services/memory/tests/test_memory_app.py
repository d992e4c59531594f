"""``llmesh serve memory`` as a process: ready when the store answers, clean exit on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.polling import wait_until
from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc


def _serve(*args: str, home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmesh_cli.main", "serve", "memory", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "LLMESH_HOME": str(home)},
    )


def test_serve_memory_then_sigterm_exits_zero(tmp_path: Path) -> None:
    port = free_port()
    process = _serve(
        "--port", str(port), "--data-dir", str(tmp_path), "--embedder", "", home=tmp_path
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)

        def ready() -> bool:
            try:
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service="llmesh.v1.MemoryService"), timeout=1
                )
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(ready, timeout_s=60, interval_s=0.1, what="memory readiness")
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        reply = stub.Remember(
            memory_pb2.MemoryServiceRememberRequest(
                namespace="n", memory=common_pb2.MemoryDraft(text="kept on disk")
            ),
            timeout=10,
        )
        assert reply.id and not reply.embedded
        assert (tmp_path / "memory.db").exists()
        channel.close()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    process = _serve("--store", "postgres", home=tmp_path)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert b"postgres_dsn" in out
