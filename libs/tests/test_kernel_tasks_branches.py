"""Supervised loops at their edges, on a fixed clock where time matters: the crash
window and backoff reset, a loop that may not restart, duplicate names, and a thread
whose crash handler itself fails."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llmesh.kernel.tasks import RestartPolicy, SupervisedThread, Supervisor, _CrashBook
from llmesh.testing.polling import await_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_crash_window_slides_and_a_stable_run_resets_backoff() -> None:
    clock = Clock()
    policy = RestartPolicy(min_backoff_s=1.0, max_backoff_s=8.0, max_crashes=2, window_s=60.0)
    book = _CrashBook("loop", policy, clock)
    assert not book.crashed(RuntimeError("a"), ran_s=0.1)
    assert book.next_backoff() == 1.0
    assert book.next_backoff() == 2.0
    clock.now = 61.0  # the first crash left the window
    assert not book.crashed(RuntimeError("b"), ran_s=0.1)
    assert book.backoff_s == 4.0
    clock.now = 62.0
    assert book.crashed(RuntimeError("c"), ran_s=0.1)  # two within 60 s: hopeless
    assert book.crashes == 3 and str(book.last_error) == "c"
    assert book.backoff_s == 4.0
    book.crashed(RuntimeError("d"), ran_s=policy.stable_after_s)
    assert book.backoff_s == 1.0  # a run of stable_after_s reset it
    book.recovered()
    assert book.backoff_s == 1.0
    clock.now = 62.5
    assert not book.crashed(RuntimeError("e"), ran_s=0.1)  # the window was cleared


def test_without_restart_one_crash_is_hopeless(caplog: pytest.LogCaptureFixture) -> None:
    book = _CrashBook("once", RestartPolicy(restart=False), Clock())
    with caplog.at_level(logging.ERROR):
        assert book.crashed(ValueError("x"), ran_s=1.0)
    assert "not restarted" in caplog.text


async def test_a_loop_that_may_not_restart_runs_once() -> None:
    runs: list[int] = []

    async def crash() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    supervisor = Supervisor(policy=RestartPolicy(restart=False))
    task = supervisor.spawn("once", crash)
    await asyncio.wait_for(task.task, 30)
    assert runs == [1]
    assert task.failing and task.crashes == 1 and task.restarts == 0


async def test_names_are_unique_while_running() -> None:
    supervisor = Supervisor()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    first = supervisor.spawn("loop", forever)
    await asyncio.wait_for(started.wait(), 30)
    with pytest.raises(ValueError, match="a background loop named 'loop' is already running"):
        supervisor.spawn("loop", forever)
    await first.stop()

    async def done() -> None:
        return None

    again = supervisor.spawn("loop", done)
    await asyncio.wait_for(again.task, 30)
    await supervisor.stop()


async def test_a_thread_whose_crash_handler_fails(caplog: pytest.LogCaptureFixture) -> None:
    def target() -> None:
        raise RuntimeError("thread crashed")

    def handler(exc: BaseException) -> None:
        raise ValueError("handler broke too")

    thread = SupervisedThread("worker", target, on_crash=handler)
    thread.join()  # before start: nothing to wait for
    thread = SupervisedThread("worker", target, on_crash=handler)
    with caplog.at_level(logging.ERROR):
        thread.start()

        async def ended() -> bool:
            return not thread.is_alive()

        await await_until(ended, timeout_s=30)
    assert thread.failed and thread.crashes == 1
    assert "crash handler of worker failed" in caplog.text


def test_a_thread_started_outside_an_event_loop_reports_nothing() -> None:
    def target() -> None:
        raise RuntimeError("x")

    thread = SupervisedThread("plain", target)
    thread.start()
    thread.join(30)
    assert thread.failed
