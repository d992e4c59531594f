"""Supervised background work: crashes logged, restarts with backoff, liveness on a real server."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.health import HealthReporter
from llmesh.kernel.tasks import RestartPolicy, SupervisedThread, Supervisor
from llmesh.testing.polling import await_until

FAST = RestartPolicy(
    min_backoff_s=0.01, max_backoff_s=0.04, max_crashes=3, window_s=30.0, stable_after_s=0.3
)


class Probe:
    """A real gRPC server carrying a HealthReporter, and a client asking ``liveness``."""

    def __init__(self, health: HealthReporter, server: grpc.aio.Server, port: int) -> None:
        self.health = health
        self.server = server
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    async def liveness(self) -> int:
        reply = await self.stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
        return int(reply.status)


@pytest.fixture
async def probe() -> AsyncIterator[Probe]:
    health = HealthReporter(["test.Service"])
    await health.set_ready(True)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    p = Probe(health, server, port)
    yield p
    await p.channel.close(None)
    await server.stop(0)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_crashing_loop_is_logged_with_its_stack_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    running = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"boom {runs}")
        running.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(policy=FAST)
    with caplog.at_level(logging.ERROR, logger="llmesh.tasks"):
        task = supervisor.spawn("looper", loop)
        await asyncio.wait_for(running.wait(), 5)
    assert task.crashes == 2 and task.restarts == 2 and not task.failing
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert "background loop looper crashed" in crashes[0].getMessage()
    assert crashes[0].exc_info is not None and "boom 1" in str(crashes[0].exc_info[1])
    await supervisor.stop()
    assert task.task.done()


async def test_backoff_doubles_up_to_the_bound() -> None:
    stamps: list[float] = []
    policy = RestartPolicy(min_backoff_s=0.02, max_backoff_s=0.08, max_crashes=100)

    async def loop() -> None:
        stamps.append(asyncio.get_running_loop().time())
        raise RuntimeError("again")

    supervisor = Supervisor(policy=policy)
    supervisor.spawn("backoff", loop)
    await await_until(_async(lambda: len(stamps) >= 6), timeout_s=5)
    await supervisor.stop()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08
    assert all(g < 0.08 + 0.5 for g in gaps)  # bounded (generous slack for a busy box)


async def test_repeated_crashes_flip_liveness_and_a_stable_run_restores_it(probe: Probe) -> None:
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise ValueError("store exploded")
        await asyncio.Event().wait()  # then runs fine

    supervisor = Supervisor(health=probe.health, policy=FAST)
    assert await probe.liveness() == SERVING
    task = supervisor.spawn("flaky", loop)
    await await_until(lambda: _is(probe, NOT_SERVING), timeout_s=5, what="liveness NOT_SERVING")
    assert task.failing and probe.health.down == ("flaky",)
    # The fourth run does not crash: after stable_after_s liveness is SERVING again.
    await await_until(lambda: _is(probe, SERVING), timeout_s=5, what="liveness SERVING again")
    assert not task.failing and probe.health.live
    await supervisor.stop()


async def test_a_loop_that_returns_is_finished_not_restarted() -> None:
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    supervisor = Supervisor(policy=FAST)
    task = supervisor.spawn("once", once)
    await asyncio.wait_for(task.task, 5)
    assert runs == 1 and task.crashes == 0


async def test_stop_is_cancellation_clean(caplog: pytest.LogCaptureFixture) -> None:
    cleaned = asyncio.Event()
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    supervisor = Supervisor(policy=FAST)
    with caplog.at_level(logging.WARNING):
        task = supervisor.spawn("quiet", loop)
        await asyncio.wait_for(started.wait(), 5)
        await supervisor.stop()
    assert cleaned.is_set() and task.task.done() and task.crashes == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_loop_cancelling_itself_counts_as_a_crash() -> None:
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise asyncio.CancelledError
        await asyncio.Event().wait()

    supervisor = Supervisor(policy=FAST)
    task = supervisor.spawn("self-cancel", loop)
    await await_until(_async(lambda: runs == 2), timeout_s=5)
    assert task.crashes == 1 and not task.task.done()
    await supervisor.stop()


async def test_a_dead_thread_runs_its_crash_handler_and_fails_liveness(probe: Probe) -> None:
    handled: list[BaseException] = []

    def target() -> None:
        raise RuntimeError("MLX exploded")

    thread = SupervisedThread("engine", target, health=probe.health, on_crash=handled.append)
    thread.start()
    await await_until(lambda: _is(probe, NOT_SERVING), timeout_s=5, what="liveness NOT_SERVING")
    thread.join(5)
    assert not thread.is_alive() and thread.failed and thread.crashes == 1
    assert [str(e) for e in handled] == ["MLX exploded"]


async def test_a_thread_with_a_restart_policy_is_restarted() -> None:
    runs = 0
    done = threading.Event()

    def target() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError("flaky")
        done.set()

    thread = SupervisedThread("flaky-thread", target, policy=FAST)
    thread.start()
    await await_until(_async(done.is_set), timeout_s=5)
    thread.join(5)
    assert runs == 3 and thread.crashes == 2 and not thread.failed


async def _is(probe: Probe, status: int) -> bool:
    return await probe.liveness() == status


def _async(predicate: Callable[[], object]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(predicate())

    return check
