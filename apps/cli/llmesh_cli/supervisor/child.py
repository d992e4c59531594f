"""One supervised child process in its own process group."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path

from llmesh_cli.supervisor.plan import ServiceSpec

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: the child gets SIGTERM if the supervisor dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A running (or exited) service process; its group id equals its pid."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Spawn the child with its output appended to its log file."""
        self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.spec.env, "PYTHONUNBUFFERED": "1"}
        with open(self.spec.log_file, "ab") as log:  # noqa: ASYNC230 - a local append
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent if os.name == "posix" else None,
            )
        self.started_at = time.monotonic()
        self.starts += 1

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the child's whole process group (it and anything it spawned)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def stop(self, *, grace_s: float) -> int | None:
        """SIGTERM (the service drains), then SIGKILL after ``grace_s``."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=max(0.0, grace_s))
            except TimeoutError:
                self.signal_group(signal.SIGKILL)
                await self.process.wait()
        # Anything left in the group (a grandchild) goes too.
        self.signal_group(signal.SIGKILL)
        return self.process.returncode


def tail(path: Path, lines: int = 2, width: int = 300) -> str:
    """The last lines of a log file (each cut to ``width``), for crash messages."""
    try:
        data = path.read_bytes()[-8000:]
    except OSError:
        return ""
    last = data.decode(errors="replace").splitlines()[-lines:]
    return "\n".join("  " + line[:width] for line in last)
