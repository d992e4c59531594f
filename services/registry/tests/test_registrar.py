"""The registrar against a real inference worker (tiny model) and a real registry."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.testing.servers import free_port, wait_for_port
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_registry.settings import RegistrySettings
from llmesh_registry.wiring import SERVICE_NAMES, wire

READY = common_pb2.WORKER_STATE_READY
UNHEALTHY = common_pb2.WORKER_STATE_UNHEALTHY
DRAINING = common_pb2.WORKER_STATE_DRAINING
REMOVED = registry_pb2.WORKER_EVENT_TYPE_REMOVED
TTL_MS = 3000
MODEL = "tiny-llama-test"


def llmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmesh_cli.main", *args]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def inference_worker(tiny_model_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    process = subprocess.Popen(
        llmesh(
            "serve", "inference", "--port", str(port), "--models-dir", str(tiny_model_dir),
            "--default-model", MODEL, "--no-embeddings", "--log-format", "text",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout_s=60)
        yield process, f"127.0.0.1:{port}"
    finally:
        stop(process)


@contextlib.asynccontextmanager
async def registry() -> AsyncIterator[tuple[registry_pb2_grpc.RegistryServiceAsyncStub, str]]:
    settings = RegistrySettings(port=0, lease_ttl_ms=TTL_MS, evict_after_ms=60_000)
    async with serving(
        settings, SERVICE_NAMES, lambda host: wire(host, settings), grace_s=0.5
    ) as served:
        channel = grpc.aio.insecure_channel(served.address)
        stub: registry_pb2_grpc.RegistryServiceAsyncStub = registry_pb2_grpc.RegistryServiceStub(
            channel  # type: ignore[assignment]
        )
        try:
            yield stub, served.address
        finally:
            await channel.close(None)


class Timeline:
    """Every change to the worker, with the monotonic time it arrived."""

    def __init__(self, stub: registry_pb2_grpc.RegistryServiceAsyncStub) -> None:
        self.events: list[tuple[float, registry_pb2.WorkerEvent]] = []
        self._call = stub.WatchWorkers(registry_pb2.WatchWorkersRequest())
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for message in self._call:
                if message.HasField("event"):
                    self.events.append((time.monotonic(), message.event))

    async def first(self, after: float, state: int | None = None, removed: bool = False) -> float:
        async def find() -> float | None:
            for at, event in self.events:
                if at < after:
                    continue
                if removed and event.type == REMOVED:
                    return at
                if not removed and event.type != REMOVED and event.worker.state == state:
                    return at
            return None

        found = await await_until(find, timeout_s=20, what=f"state {state} removed={removed}")
        assert found is not None
        return found

    def latest(self) -> registry_pb2.WorkerEvent:
        return self.events[-1][1]

    async def close(self) -> None:
        self._call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_registrar_registers_marks_hung_worker_and_deregisters(
    inference_worker: tuple[subprocess.Popen[bytes], str],
) -> None:
    worker, worker_address = inference_worker
    async with registry() as (stub, registry_address):
        timeline = Timeline(stub)
        registrar = subprocess.Popen(
            llmesh(
                "serve", "registrar", "--worker", worker_address, "--registry", registry_address,
                "--worker-id", "w-real", "--label", "zone=test", "--probe-timeout-s", "0.5",
                "--port", "0", "--log-format", "text",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            start = time.monotonic()
            await timeline.first(start, READY)
            listed = await stub.ListWorkers(
                registry_pb2.RegistryServiceListWorkersRequest(state=READY, model=MODEL)
            )
            assert [w.worker_id for w in listed.workers] == ["w-real"]
            info = listed.workers[0]
            assert info.address == worker_address
            assert MODEL in info.models_loaded and MODEL in info.models_available
            # The worker's ListModels figures travel with the registration.
            figures = {m.name: m for m in info.models}
            assert figures[MODEL].context_length > 0 and figures[MODEL].parameters > 0
            assert figures[MODEL].dtype and not figures[MODEL].embedding
            assert info.capacity > 0 and info.labels.entries["zone"] == "test"
            assert info.load.free_slots == info.capacity

            # The worker hangs: it must leave READY within one TTL.
            os.kill(worker.pid, signal.SIGSTOP)
            hung_at = time.monotonic()
            try:
                unhealthy_at = await timeline.first(hung_at, UNHEALTHY)
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            print(f"hung worker left READY after {unhealthy_at - hung_at:.2f}s (TTL {TTL_MS} ms)")
            assert unhealthy_at - hung_at < TTL_MS / 1000
            assert "timed out" in timeline.latest().worker.state_reason

            # It recovers: READY again.
            await timeline.first(time.monotonic(), READY)

            # SIGTERM: DRAINING, then deregistered, exit 0.
            registrar.send_signal(signal.SIGTERM)
            term_at = time.monotonic()
            drained_at = await timeline.first(term_at, DRAINING)
            removed_at = await timeline.first(term_at, removed=True)
            assert drained_at <= removed_at
            assert registrar.wait(timeout=15) == 0
            empty = await stub.ListWorkers(registry_pb2.RegistryServiceListWorkersRequest())
            assert list(empty.workers) == []
        finally:
            stop(registrar)
            await timeline.close()
