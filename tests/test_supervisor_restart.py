"""Supervisor mechanics with small stand-in children: backoff, circuit, kill, orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from llmesh.testing.polling import await_until, wait_until
from llmesh.testing.servers import free_port
from llmesh_cli.supervisor.plan import ServiceSpec
from llmesh_cli.supervisor.restart import RestartPolicy
from llmesh_cli.supervisor.state import read_state
from llmesh_cli.supervisor.supervisor import Supervisor


def test_backoff_doubles_to_the_cap_and_the_circuit_opens() -> None:
    policy = RestartPolicy(initial_s=1, max_s=60, max_crashes=10, window_s=600)
    delays = [policy.on_crash(now=float(i), ran_for_s=0.5) for i in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert policy.on_crash(now=9.0, ran_for_s=0.5) is None  # 10 crashes in 10 minutes

    stable = RestartPolicy(initial_s=1, max_s=60, max_crashes=3, window_s=10, stable_s=30)
    assert stable.on_crash(now=0, ran_for_s=1) == 1
    assert stable.on_crash(now=1, ran_for_s=1) == 2
    # A long healthy run resets the backoff; old crashes leave the window.
    assert stable.on_crash(now=100, ran_for_s=99) == 1
    assert stable.recent_crashes == 1


def spec(tmp_path: Path, name: str, code: str) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        argv=(sys.executable, "-c", code),
        port=free_port(),
        log_file=tmp_path / "logs" / f"{name}.log",
        start_timeout_s=0.3,
    )


async def test_crash_loop_backs_off_then_gives_up(tmp_path: Path) -> None:
    lines: list[str] = []
    supervisor = Supervisor(
        [spec(tmp_path, "crasher", "import sys; print('boom'); sys.exit(3)")],
        home=tmp_path,
        say=lines.append,
        policy=lambda: RestartPolicy(initial_s=0.05, max_s=1, max_crashes=4, window_s=60),
    )
    started = time.monotonic()
    await supervisor.start()

    async def gave_up() -> bool:
        return any("not restarting it" in line for line in lines)

    await await_until(gave_up, timeout_s=20, what="circuit open")
    assert [line for line in lines if line.startswith("restarting")] == [
        "restarting crasher in 0.05s",
        "restarting crasher in 0.1s",
        "restarting crasher in 0.2s",
    ]
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # the backoff was honoured
    assert any("crasher crashed 4 times within 60s" in line for line in lines)
    assert any("exited with code 3" in line for line in lines)
    assert any("boom" in line for line in lines)  # the log tail is shown
    state = read_state(tmp_path)
    assert state is not None and state.services[0].status == "failed"
    assert supervisor.restarts("crasher") == 3
    await supervisor.shutdown()
    assert read_state(tmp_path) is None


async def test_shutdown_kills_a_stubborn_child_and_its_grandchild(tmp_path: Path) -> None:
    grandchild_file = tmp_path / "grandchild.pid"
    stubborn = (
        "import signal, subprocess, time, pathlib\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        f"pathlib.Path({str(grandchild_file)!r}).write_text(str(p.pid))\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "time.sleep(300)\n"
    )
    lines: list[str] = []
    supervisor = Supervisor(
        [spec(tmp_path, "stubborn", stubborn)], home=tmp_path, say=lines.append, grace_s=0.5
    )
    await supervisor.start()
    child_pid = supervisor.children[0].pid
    assert child_pid is not None
    await await_until(_exists(grandchild_file), timeout_s=10, what="grandchild started")
    grandchild = int(grandchild_file.read_text())
    started = time.monotonic()
    await supervisor.shutdown()
    assert time.monotonic() - started < 5
    for pid in (child_pid, grandchild):
        assert not _alive(pid), f"pid {pid} outlived the supervisor's shutdown"


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await asyncio.to_thread(lambda: path.exists() and path.read_text() != "")

    return check


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL leaves no time to drain: PR_SET_PDEATHSIG still takes the children down."""
    up = subprocess.Popen(
        [
            sys.executable, "-m", "llmesh_cli.main", "up", "--home", str(tmp_path),
            "--services", "registry", "--free-ports", "--no-metrics",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def registry_running() -> int | None:
            state = read_state(tmp_path)
            if state is None or state.services[0].status != "running":
                return None
            return state.services[0].pid

        child = wait_until(registry_running, timeout_s=60, what="registry running")
        assert child is not None and _alive(child)
        os.kill(up.pid, signal.SIGKILL)
        up.wait(timeout=10)
        wait_until(lambda: not _alive(child), timeout_s=10, what="orphan gone")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
