"""A worker started the ordinary way (``llmesh serve inference``) as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.polling import wait_until
from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from llmesh_inference.blas import find_openblas_preload

MODEL = "tiny-llama-test"


@pytest.fixture
def worker_process(
    tiny_model_dir: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMESH_")}
    env["LLMESH_HOME"] = str(tmp_path)
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmesh_cli.main",
            "serve",
            "inference",
            "--port",
            str(port),
            "--models-dir",
            str(tiny_model_dir),
            "--default-model",
            MODEL,
            "--no-embeddings",
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, port, metrics_port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def _ready(channel: grpc.Channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=2
        )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux-only")
@pytest.mark.skipif(find_openblas_preload() is None, reason="no optimized OpenBLAS installed")
def test_serve_inference_runs_on_openblas_and_stops_cleanly(
    worker_process: tuple[subprocess.Popen[bytes], int, int],
) -> None:
    proc, port, metrics_port = worker_process
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        wait_until(lambda: _ready(channel), timeout_s=60, what="worker readiness")
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stats = stub.Stats(inference_pb2.StatsRequest(), timeout=5)
        chunks = list(
            stub.Generate(
                inference_pb2.InferenceServiceGenerateRequest(
                    input=common_pb2.GenerationInput(
                        prompt="hello", sampling=common_pb2.SamplingParams(max_tokens=3)
                    )
                ),
                timeout=30,
            )
        )
    assert stats.blas == "openblas"
    assert stats.device == "cpu"
    assert stats.default_model == MODEL
    assert [m.name for m in stats.loaded_models] == [MODEL]
    assert chunks[-1].done.usage.completion_tokens == 3
    # The process that serves (the same pid: it re-executed itself) maps OpenBLAS.
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "libopenblas" in maps
    # Domain metrics on the Prometheus endpoint.
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    for name in (
        "llmesh_inference_time_to_first_token",
        "llmesh_inference_inter_token_latency",
        "llmesh_inference_tokens_generated",
        "llmesh_inference_batch_size",
        "llmesh_inference_queue_depth",
    ):
        assert name in metrics, name
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
