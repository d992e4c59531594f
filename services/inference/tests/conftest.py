"""Fixtures: a real inference worker (gRPC server on 127.0.0.1:0) on the tiny test model."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.v1 import inference_pb2, inference_pb2_grpc
from llmesh_inference.settings import InferenceSettings
from llmesh_inference.wiring import SERVICE_NAMES, wire
from llmesh_inference.worker import InferenceWorker

MODEL = "tiny-llama-test"


@dataclass
class Running:
    """A started worker: its stub, health stub, and the in-process worker object."""

    stub: Any  # inference_pb2_grpc.InferenceServiceStub on an aio channel
    health: Any  # health_pb2_grpc.HealthStub on an aio channel
    worker: InferenceWorker
    channel: grpc.aio.Channel

    async def stats(self) -> inference_pb2.StatsResponse:
        reply: inference_pb2.StatsResponse = await self.stub.Stats(
            inference_pb2.StatsRequest(), timeout=5
        )
        return reply

    async def health_status(self, service: str) -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


StartWorker = Callable[..., contextlib.AbstractAsyncContextManager[Running]]


@pytest.fixture
def start_worker(tiny_model_dir: Path) -> StartWorker:
    """``async with start_worker(**settings) as w:`` runs a worker until the block ends.

    Waits for readiness unless ``wait_ready=False``.
    """

    @contextlib.asynccontextmanager
    async def start(wait_ready: bool = True, **overrides: Any) -> AsyncIterator[Running]:
        values: dict[str, Any] = {
            "port": 0,
            "models_dir": tiny_model_dir,
            "default_model": MODEL,
            "embeddings": False,
            "grace_period_s": 1.0,
            "log_format": "text",
        }
        values.update(overrides)
        settings = InferenceSettings(**values)
        async with serving(
            settings, SERVICE_NAMES, lambda host: wire(host, settings), grace_s=0.5
        ) as served:
            channel = grpc.aio.insecure_channel(served.address)
            running = Running(
                stub=inference_pb2_grpc.InferenceServiceStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
                worker=served.parts,
                channel=channel,
            )
            try:
                if wait_ready:
                    await await_until(
                        lambda: _is_serving(running, "readiness"),
                        timeout_s=30,
                        what="readiness",
                    )
                yield running
            finally:
                await channel.close(None)

    return start


async def _is_serving(running: Running, service: str) -> bool:
    status = await running.health_status(service)
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
def models_copy(tmp_path: Path, tiny_model_dir: Path) -> Callable[[list[str]], Path]:
    """A fresh models directory with copies of the test model under the given names."""

    def make(names: list[str]) -> Path:
        root = tmp_path / "models"
        root.mkdir(exist_ok=True)
        for name in names:
            shutil.copytree(tiny_model_dir / MODEL, root / name)
        return root

    return make


@pytest.fixture
def rpc_details() -> Callable[[grpc.aio.AioRpcError], dict[str, Any]]:
    """Returns a function giving the rich status details of a failed call, by type name."""
    return status_details


def status_details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The rich details of a failed call, by type name."""
    status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    if status is None:
        return out
    for detail in status.details:
        for cls in (
            error_details_pb2.RetryInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.ErrorInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                out[cls.DESCRIPTOR.name] = message
    return out
