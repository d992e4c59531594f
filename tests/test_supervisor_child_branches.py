"""In-process tests of one supervised child (supervisor/child.py) with small shell
children: output to its log, SIGTERM honoured, SIGKILL after the grace period for a
child that ignores it, the whole process group stopped, and log tails."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llmesh.testing.polling import await_until
from llmesh_cli.supervisor.child import Child, tail
from llmesh_cli.supervisor.plan import ServiceSpec


def _spec(tmp_path: Path, script: str, **env: str) -> ServiceSpec:
    return ServiceSpec(
        name="svc",
        argv=("sh", "-c", script),
        port=1,
        log_file=tmp_path / "logs" / "svc.log",
        env=dict(env),
    )


async def test_not_started() -> None:
    child = Child(_spec(Path("/nonexistent"), "true"))
    assert child.pid is None and not child.running
    child.signal_group(signal.SIGTERM)  # nothing to signal: no error
    assert await child.stop(grace_s=0) is None


async def test_output_and_env_go_to_the_log(tmp_path: Path) -> None:
    child = Child(_spec(tmp_path, 'echo "hello $GREETING"; echo oops >&2', GREETING="mesh"))
    await child.start()
    assert child.starts == 1 and child.pid is not None
    assert await child.wait() == 0
    assert not child.running
    log = (tmp_path / "logs" / "svc.log").read_text()
    assert "hello mesh" in log and "oops" in log
    assert await child.stop(grace_s=5) == 0  # already exited: its code
    await child.start()  # a restart appends to the same log
    await child.wait()
    assert child.starts == 2
    assert (tmp_path / "logs" / "svc.log").read_text().count("hello mesh") == 2


async def test_sigterm_stops_a_child_that_honours_it(tmp_path: Path) -> None:
    child = Child(_spec(tmp_path, "exec sleep 300"))
    await child.start()
    assert child.running
    code = await child.stop(grace_s=60)
    assert code == -signal.SIGTERM


async def test_sigkill_after_the_grace_period_and_the_group_goes_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # Ignores SIGTERM; its grandchild (same process group) would outlive a plain kill.
    script = f'trap "" TERM; sleep 300 & echo $! > {pid_file}; wait'
    child = Child(_spec(tmp_path, script))
    await child.start()
    grandchild = await await_until(_async(lambda: _read_pid(pid_file)), timeout_s=60)
    # (the trap is set by then)
    code = await child.stop(grace_s=0)
    assert code == -signal.SIGKILL
    assert await await_until(_async(lambda: not _alive(grandchild)), timeout_s=60)


def _async(check: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def predicate() -> Any:
        return check()

    return predicate


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_tail(tmp_path: Path) -> None:
    assert tail(tmp_path / "missing.log") == ""
    log = tmp_path / "x.log"
    log.write_bytes(b"one\ntwo\n" + b"x" * 500 + b"\n\xff bad byte\n")
    assert tail(log, lines=2, width=10) == "  xxxxxxxxxx\n  \ufffd bad byte"
    assert tail(log, lines=1) == "  \ufffd bad byte"
