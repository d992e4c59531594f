"""``llmesh up`` as a real subprocess: the whole mesh starts, a killed child comes
back, ``llmesh status`` reports it, and SIGTERM leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from llmesh.testing.polling import wait_until
from llmesh_cli.supervisor.plan import available_services
from llmesh_cli.supervisor.state import UpState, read_state


def llmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmesh_cli.main", *args]


def mesh_processes(home: Path) -> list[psutil.Process]:
    """Every process started for this mesh (children carry LLMESH_HOME=home)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.environ().get("LLMESH_HOME") == str(home)
                and proc.pid != os.getpid()
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    home = tmp_path / "home"
    log = (tmp_path / "up.out").open("wb")
    process = subprocess.Popen(
        llmesh(
            "up", "--home", str(home), "--free-ports", "--no-metrics", "--model-size", "test",
            "--no-embeddings", "--backoff-initial-s", "0.2", "--grace-period-s", "15",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LLMESH_HOME": str(home), "COLUMNS": "200"},
    )  # fmt: skip
    try:
        yield process, home
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        for proc in mesh_processes(home):
            proc.kill()


def all_running(home: Path) -> UpState | None:
    state = read_state(home)
    if state is None or any(s.status != "running" for s in state.services):
        return None
    return state


def test_up_starts_mesh_restarts_a_killed_child_and_stops_cleanly(
    up: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    process, home = up
    state: Any = wait_until(lambda: all_running(home), timeout_s=180, what="every service running")
    names = [s.name for s in state.services]
    assert names == available_services()
    assert {"registry", "inference", "registrar"} <= set(names)
    assert (home / "models" / "tiny-llama-test" / "config.json").is_file()

    # `llmesh status` sees every service SERVING and the registered worker.
    def status() -> Any:
        done = subprocess.run(
            llmesh("status", "--home", str(home), "--json"),
            check=False,
            capture_output=True,
            timeout=60,
        )
        return json.loads(done.stdout) if done.returncode == 0 else None

    def serving_with_a_ready_worker() -> Any:
        # "running" (the pid is up) comes before SERVING and before the registrar's
        # first heartbeat: poll until the report shows both, not just until it answers.
        report = status()
        if report is None:
            return None
        healthy = {s["name"]: s["health"] for s in report["services"]}
        workers = report["workers"]
        ready = isinstance(workers, list) and [w["state"] for w in workers] == [
            "WORKER_STATE_READY"
        ]
        return report if healthy == dict.fromkeys(names, "SERVING") and ready else None

    wait_until(
        serving_with_a_ready_worker, timeout_s=180, interval_s=0.5, what="all SERVING, worker READY"
    )

    # Kill the registry: the supervisor restarts it, the registrar re-registers.
    old = {s.name: s.pid for s in state.services}
    os.kill(old["registry"], signal.SIGKILL)

    def restarted() -> UpState | None:
        now = all_running(home)
        if now is None:
            return None
        pids = {s.name: s.pid for s in now.services}
        return now if pids["registry"] != old["registry"] else None

    state = wait_until(restarted, timeout_s=60, what="registry restarted")
    assert state is not None
    new = {s.name: s.pid for s in state.services}
    assert {n: p for n, p in new.items() if n != "registry"} == {
        n: p for n, p in old.items() if n != "registry"
    }

    def worker_back() -> bool:
        report = status()
        return bool(report and [w["state"] for w in report["workers"]] == ["WORKER_STATE_READY"])

    wait_until(worker_back, timeout_s=60, interval_s=0.5, what="worker registered again")

    # The user's first steps: a key from the local key store works at the mesh's gateway.
    env = {**os.environ, "LLMESH_HOME": str(home)}
    created = subprocess.run(
        llmesh("keys", "create", "--role", "user", "--tenant", "acme", "--json"),
        check=True, capture_output=True, timeout=60, env=env,
    )  # fmt: skip
    env["LLMESH_API_KEY"] = json.loads(created.stdout)["api_key"]
    gateway = next(s.address for s in state.services if s.name == "gateway")
    generated = subprocess.run(
        llmesh("generate", "--target", gateway, "--max-tokens", "4", "Once upon a time"),
        check=False, capture_output=True, timeout=120, env=env,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr.decode()
    assert generated.stdout.strip()

    # SIGTERM: every child drains, the supervisor exits 0, nothing is left.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    for pid in {*old.values(), *new.values()}:
        assert not psutil.pid_exists(pid) or _zombie(pid), pid
    assert mesh_processes(home) == []
    assert read_state(home) is None
    output = (tmp_path / "up.out").read_text()
    assert "restarting registry in 0.2s" in output
    assert "all services stopped" in output


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
