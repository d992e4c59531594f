"""Chaos: inference workers overloaded, stopped, killed and frozen under load (issue 19,
findings 3, 4 and 6, and the worker scenarios of its chaos suite).

A real mesh: registry (in-memory), two tiny-model workers each with its registrar (as
in a pod), and the gateway, every one its own process. The workers decode at a fixed
pace (``decode_delay_ms`` = 20 ms a step, so the figures do not depend on the machine's
speed) in batches of 4 with a grace period of 20 s. Clients call ``GenerateStream``
through the gateway and record each call's outcome.

What must hold (docs/reliability.md "Worker faults and load shedding"):

- Overload with short deadlines: every call is OK or refused early
  (``RESOURCE_EXHAUSTED``); none waits out its deadline in a queue.
- SIGTERM to a worker and its registrar together: the worker is DRAINING in the
  registry (not UNHEALTHY, not removed) until its in-flight streams have finished,
  they finish normally, new calls go to the other worker, both exit 0.
- Rolling restart of both workers under load: zero failed calls.
- SIGKILL of one worker under load: every call that had not started streaming
  succeeds (on the other worker); only streams cut mid-way fail, with
  ``STREAM_INTERRUPTED``.
- SIGSTOP of a worker: it leaves READY within the lease TTL, and with deadlines that
  outlast the freeze no call fails.
- A worker stopped with SIGTERM five times (with and without work in flight) exits 0
  every time (finding 6: it aborted with ``terminate called without an active
  exception`` in 1 of 3 stops).

Every mesh test first restores the baseline (both workers and registrars running,
both workers READY), so they pass in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from llmesh.testing.polling import wait_until
from llmesh.testing.rpc import error_details
from llmesh.testing.servers import free_port
from llmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options, readiness
from llmesh_cli.supervisor.plan import build_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "tiny-llama-test"
READY = common_pb2.WORKER_STATE_READY
DRAINING = common_pb2.WORKER_STATE_DRAINING
UNHEALTHY = common_pb2.WORKER_STATE_UNHEALTHY
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PAIRS = (("inference", "registrar"), ("inference-1", "registrar-1"))
WORKER_ENV = {
    "LLMESH_INFERENCE_DECODE_DELAY_MS": "20",
    "LLMESH_INFERENCE_GRACE_PERIOD_S": "20",
}
TTL_MS = 6000  # a heartbeat every 2 s, each probe allowed 1 s (a loaded box is slow)
LONG = 300  # tokens of a long stream: 6 s+ at 20 ms a step, well inside the grace period


# ----- the mesh ---------------------------------------------------------------------------


@dataclass
class WorkerMesh:
    mesh: LocalMesh
    gateway: str
    registry: str
    key: str

    def worker_id(self, name: str) -> str:
        return f"local-{self.mesh.port(name)}"

    def states(self) -> dict[str, int]:
        """Worker id -> state, as the registry has it now."""
        with grpc.insecure_channel(self.registry) as channel:
            reply = registry_pb2_grpc.RegistryServiceStub(channel).ListWorkers(
                registry_pb2.RegistryServiceListWorkersRequest(), timeout=5
            )
        return {w.worker_id: int(w.state) for w in reply.workers}

    def state(self, name: str) -> int | None:
        return self.states().get(self.worker_id(name))

    def restore(self) -> None:
        """Both workers and registrars running, both workers READY in the registry."""
        for worker, registrar in PAIRS:
            if not self.mesh.running(worker):
                self.mesh.spawn(worker)
            if not self.mesh.running(registrar):
                self.mesh.spawn(registrar)
        for worker, _ in PAIRS:
            os.killpg(self.mesh.pid(worker), signal.SIGCONT)
            wait_until(
                lambda w=worker: self.state(w) == READY,  # type: ignore[misc]
                timeout_s=120,
                what=f"{worker} READY in the registry",
            )


@pytest.fixture(scope="module")
def worker_mesh(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[WorkerMesh]:
    tmp = tmp_path_factory.mktemp("chaos-workers")
    worker_args = ["--max-batch-size", "4", "--queue-capacity", "64"]
    options = mesh_options(
        tmp,
        models_dir=tiny_model_dir,
        default_model=MODEL,
        services=("registry", "inference", "registrar", "gateway"),
        workers=2,
        embeddings=False,
        args={
            "registry": ["--lease-ttl-ms", str(TTL_MS), "--evict-after-ms", "60000"],
            "inference": [*worker_args, "--data-dir", str(tmp / "w0")],
            "inference-1": [*worker_args, "--data-dir", str(tmp / "w1")],
            "registrar": ["--probe-timeout-s", "1.0"],
            "registrar-1": ["--probe-timeout-s", "1.0"],
        },
        env={
            "inference": WORKER_ENV,
            "inference-1": WORKER_ENV,
            "gateway": {
                "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "1000000",
                "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "1000000",
                "LLMESH_GATEWAY_RATE_LIMIT__BURST_SECONDS": "60",
                "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "100000000",
                "LLMESH_GATEWAY_RATE_LIMIT__CONCURRENT_STREAMS": "0",
            },
        },
    )
    with LocalMesh(build_plan(options), home=tmp) as mesh:
        mesh.start(wait=False)
        for name in ("registry", "inference", "inference-1", "gateway"):
            mesh.wait_ready(name)
        running = WorkerMesh(
            mesh=mesh,
            gateway=mesh.address("gateway"),
            registry=mesh.address("registry"),
            key=mesh.create_key(role="user", tenant="chaos"),
        )
        running.restore()
        wait_until(lambda: readiness(running.gateway) == SERVING, timeout_s=60, what="gateway")
        yield running


def exit_code(mesh: LocalMesh, name: str, timeout_s: float = 60) -> int:
    """Wait for a signalled child to exit by itself (no second signal: one arriving
    after the event loop is gone would kill the process)."""
    return mesh.processes[name].wait(timeout=timeout_s)


# ----- clients ----------------------------------------------------------------------------


@dataclass
class Outcome:
    code: str  # "OK" or the status code's name
    reason: str  # ErrorInfo reason ("" if none)
    tokens: int  # tokens received before the end
    seconds: float
    deadline_s: float
    retry_info: bool = False  # the error carried a RetryInfo


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def codes(self) -> Counter[str]:
        return Counter(f"{o.code}/{o.reason}" if o.reason else o.code for o in self.outcomes)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code != "OK"]

    def summary(self) -> str:
        return f"{len(self.outcomes)} calls: {dict(self.codes())}"


def _request(max_tokens: int, prompt: str) -> gateway_pb2.GenerateStreamRequest:
    return gateway_pb2.GenerateStreamRequest(
        input=common_pb2.GenerationInput(
            prompt=prompt,
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0),
        )
    )


async def call(
    stub: Any,  # GatewayServiceStub on an aio channel
    key: str,
    *,
    deadline_s: float,
    max_tokens: int,
    prompt: str = "Tell me a story",
) -> Outcome:
    started = time.monotonic()
    tokens = 0
    try:
        stream = stub.GenerateStream(
            _request(max_tokens, prompt),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=deadline_s,
        )
        async for response in stream:
            tokens += len(response.delta.token_ids)
    except grpc.aio.AioRpcError as exc:
        details = error_details(exc)
        info = details.get("error_info")
        return Outcome(
            exc.code().name,
            info.reason if info is not None else "",
            tokens,
            time.monotonic() - started,
            deadline_s,
            "retry_info" in details,
        )
    return Outcome("OK", "", tokens, time.monotonic() - started, deadline_s)


@contextlib.asynccontextmanager
async def steady_load(
    running: WorkerMesh, *, clients: int, deadline_s: float, max_tokens: int
) -> AsyncIterator[Tally]:
    """``clients`` callers, each calling again as soon as its call ends, until the block
    ends (calls under way then finish)."""
    tally = Tally()
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(running.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                tally.outcomes.append(
                    await call(
                        stub,
                        running.key,
                        deadline_s=deadline_s,
                        max_tokens=max_tokens,
                        prompt=f"client {i} call {n}",
                    )
                )

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        try:
            await asyncio.sleep(1.0)  # traffic flows before the fault
            yield tally
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def poll(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll a blocking ``predicate`` (run in a thread) until true."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


# ----- finding 3: deadline-aware load shedding --------------------------------------------


async def test_worker_overload_refuses_early_instead_of_queueing_past_deadlines(
    worker_mesh: WorkerMesh,
) -> None:
    await asyncio.to_thread(worker_mesh.restore)
    async with grpc.aio.insecure_channel(worker_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        # The pace is measured by the first calls; then a burst far beyond what two
        # workers decode before the deadline (8 slots, ~0.3 s+ per call).
        await asyncio.gather(
            *(call(stub, worker_mesh.key, deadline_s=30, max_tokens=16) for _ in range(8))
        )
        tally = Tally(
            list(
                await asyncio.gather(
                    *(
                        call(stub, worker_mesh.key, deadline_s=4.0, max_tokens=16, prompt=f"b{i}")
                        for i in range(160)
                    )
                )
            )
        )
    print(tally.summary())
    ok = [o for o in tally.outcomes if o.code == "OK"]
    refused = [o for o in tally.outcomes if o.code == "RESOURCE_EXHAUSTED"]
    waited_out = [o for o in tally.outcomes if o.code == "DEADLINE_EXCEEDED" and not o.tokens]
    assert ok and refused, tally.summary()
    # The old worker queued ~40% of such a burst until the deadline passed.
    assert not waited_out, tally.summary()
    assert {o.reason for o in refused} <= {"QUEUE_WAIT_TOO_LONG", "QUEUE_FULL"}, tally.summary()
    assert all(o.code in ("OK", "RESOURCE_EXHAUSTED") for o in tally.outcomes), tally.summary()
    assert all(o.seconds < o.deadline_s and o.retry_info for o in refused)


# ----- finding 4: SIGTERM drains ----------------------------------------------------------


async def _long_streams_on(address: str, n: int, max_tokens: int) -> list[tuple[str, int]]:
    """``n`` streams straight on one worker: (finish status, tokens) of each. Their
    request ids are ``long-<i>``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        async def one(i: int) -> tuple[str, int]:
            tokens = 0
            try:
                async for chunk in stub.Generate(
                    inference_pb2.InferenceServiceGenerateRequest(
                        input=common_pb2.GenerationInput(
                            prompt=f"long {i}",
                            sampling=common_pb2.SamplingParams(
                                max_tokens=max_tokens, temperature=0
                            ),
                        )
                    ),
                    timeout=60,
                    metadata=(("x-request-id", f"long-{i}"),),
                ):
                    tokens += len(chunk.delta.token_ids)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, tokens
            return "OK", tokens

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_worker_sigterm_with_its_registrar_stays_draining_until_its_streams_end(
    worker_mesh: WorkerMesh,
) -> None:
    await asyncio.to_thread(worker_mesh.restore)
    mesh = worker_mesh.mesh
    address = mesh.address("inference")
    seen: list[tuple[float, int | None]] = []  # (time, the worker's state in the registry)
    watching = asyncio.Event()

    async def watch() -> None:  # until the worker is gone from the registry
        while not watching.is_set():
            at = time.monotonic()
            seen.append((at, await asyncio.to_thread(worker_mesh.state, "inference")))
            if watching.is_set() or (seen[-1][1] is None and seen[0][1] is not None):
                return
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    async with steady_load(worker_mesh, clients=6, deadline_s=20, max_tokens=8) as tally:
        streams = asyncio.ensure_future(_long_streams_on(address, 3, LONG))
        await poll(lambda: _long_running(address) == 3, timeout_s=30, what="long streams")
        # As in a pod: worker and registrar get SIGTERM together.
        os.killpg(mesh.pid("inference"), signal.SIGTERM)
        os.killpg(mesh.pid("registrar"), signal.SIGTERM)
        await poll(
            lambda: worker_mesh.state("inference") == DRAINING, timeout_s=10, what="DRAINING"
        )
        # Draining: not ready, alive, still answering.
        assert readiness(address, service="readiness") == NOT_SERVING
        assert readiness(address, service="liveness") == SERVING
        term_at = time.monotonic()
        results = await asyncio.wait_for(streams, 60)
        streams_done = time.monotonic()
        await asyncio.wait_for(watcher, 30)  # deregistered
        codes = await asyncio.to_thread(
            lambda: (exit_code(mesh, "inference"), exit_code(mesh, "registrar"))
        )
    watching.set()
    removed_at = seen[-1][0]
    print(
        f"SIGTERM: streams done after {streams_done - term_at:.2f}s, deregistered after "
        f"{removed_at - term_at:.2f}s; load {tally.summary()}"
    )
    # The registration outlived the streams (before: removed 0.37 s after SIGTERM) and
    # said DRAINING meanwhile, never UNHEALTHY.
    during = [state for t, state in seen if term_at < t < streams_done]
    assert seen[-1][1] is None and removed_at >= streams_done
    assert during and set(during) <= {READY, DRAINING}, during
    assert results == [("OK", LONG)] * 3
    assert codes == (0, 0)
    assert not tally.failed(), tally.summary()


def _long_running(address: str) -> int:
    """How many ``long-<i>`` streams are decoding on the worker at ``address``."""
    with grpc.insecure_channel(address) as channel:
        try:
            stats = inference_pb2_grpc.InferenceServiceStub(channel).Stats(
                inference_pb2.StatsRequest(), timeout=2
            )
        except grpc.RpcError:
            return -1
    return sum(1 for r in stats.requests if r.request_id.startswith("long-") and not r.queued)


def _active(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            stats = inference_pb2_grpc.InferenceServiceStub(channel).Stats(
                inference_pb2.StatsRequest(), timeout=2
            )
        except grpc.RpcError:
            return -1
        return int(stats.active_requests + stats.queued_requests)


async def test_worker_rolling_restart_under_load_fails_no_call(worker_mesh: WorkerMesh) -> None:
    await asyncio.to_thread(worker_mesh.restore)
    mesh = worker_mesh.mesh
    async with steady_load(worker_mesh, clients=8, deadline_s=20, max_tokens=12) as tally:
        for worker, registrar in PAIRS:
            os.killpg(mesh.pid(worker), signal.SIGTERM)
            os.killpg(mesh.pid(registrar), signal.SIGTERM)
            codes = await asyncio.to_thread(
                lambda w=worker, r=registrar: (exit_code(mesh, w), exit_code(mesh, r))  # type: ignore[misc]
            )
            assert codes == (0, 0), f"{worker}/{registrar} exit codes {codes}"
            mesh.spawn(worker)
            mesh.spawn(registrar)
            await poll(
                lambda w=worker: worker_mesh.state(w) == READY,  # type: ignore[misc]
                timeout_s=120,
                what=f"{worker} READY again",
            )
        during = len(tally.outcomes)
    print(tally.summary())
    assert during > 20
    assert not tally.failed(), tally.summary()


# ----- SIGKILL and SIGSTOP ----------------------------------------------------------------


async def test_worker_sigkill_under_load_fails_only_streams_cut_mid_way(
    worker_mesh: WorkerMesh,
) -> None:
    await asyncio.to_thread(worker_mesh.restore)
    mesh = worker_mesh.mesh
    async with steady_load(worker_mesh, clients=8, deadline_s=20, max_tokens=40) as tally:
        await asyncio.sleep(1.0)
        os.killpg(mesh.pid("inference"), signal.SIGKILL)
        await poll(
            lambda: worker_mesh.state("inference") in (UNHEALTHY, None),
            timeout_s=10,
            what="the killed worker out of READY",
        )
        await asyncio.sleep(2.0)  # traffic on the survivor
    mesh.stop("inference")
    print(tally.summary())
    not_streaming = [o for o in tally.outcomes if not o.tokens]
    assert all(o.code == "OK" for o in not_streaming), tally.summary()
    for failed in tally.failed():
        assert failed.tokens > 0
        assert (failed.code, failed.reason) == ("UNAVAILABLE", "STREAM_INTERRUPTED")
    await asyncio.to_thread(worker_mesh.restore)


async def test_worker_sigstop_is_routed_around_and_no_call_fails(worker_mesh: WorkerMesh) -> None:
    await asyncio.to_thread(worker_mesh.restore)
    mesh = worker_mesh.mesh
    async with steady_load(worker_mesh, clients=6, deadline_s=30, max_tokens=12) as tally:
        os.killpg(mesh.pid("inference"), signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            await poll(
                lambda: worker_mesh.state("inference") == UNHEALTHY,
                timeout_s=20,
                what="the frozen worker UNHEALTHY",
            )
            left_ready = time.monotonic() - frozen_at
            before = len(tally.outcomes)
            await asyncio.sleep(4.0)
            served_meanwhile = len(tally.outcomes) - before
        finally:
            os.killpg(mesh.pid("inference"), signal.SIGCONT)
        await poll(
            lambda: worker_mesh.state("inference") == READY, timeout_s=30, what="READY again"
        )
    print(f"frozen worker left READY after {left_ready:.2f}s; {tally.summary()}")
    assert served_meanwhile > 0  # the other worker kept serving
    assert not tally.failed(), tally.summary()


# ----- finding 6: SIGTERM exits 0 ---------------------------------------------------------


def test_worker_sigterm_exits_zero_every_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMESH_")}
    env.update(WORKER_ENV, LLMESH_HOME=str(tmp_path))
    codes = [
        _start_and_terminate(
            tiny_model_dir, tmp_path / f"worker-{attempt}.log", env, 2 * (attempt % 2)
        )
        for attempt in range(5)
    ]
    assert codes == [0] * 5


def _start_and_terminate(models: Path, log_path: Path, env: dict[str, str], streams: int) -> int:
    """Start a worker, run ``streams`` streams on it, SIGTERM it: its exit code (the
    streams must finish normally)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "llmesh_cli.main", "serve", "inference",
                "--port", str(port), "--models-dir", str(models),
                "--default-model", MODEL, "--no-embeddings",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    results: list[tuple[str, int]] = []
    try:
        wait_until(lambda: readiness(address) == SERVING, timeout_s=120, what="ready")
        thread = threading.Thread(
            target=lambda: results.extend(asyncio.run(_long_streams_on(address, streams, 60))),
            daemon=True,
        )
        thread.start()
        wait_until(lambda: _active(address) == streams, timeout_s=30, what="streams running")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        thread.join(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log_path.read_text(errors="replace")
    assert code == 0, f"exit {code} ({streams} streams in flight):\n{text[-3000:]}"
    assert "terminate called" not in text
    assert results == [("OK", 60)] * streams, results
    return code
