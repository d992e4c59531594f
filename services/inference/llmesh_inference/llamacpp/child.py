"""The supervised ``llama-server`` child: start it, watch it, stop it.

:meth:`LlamaServerChild.run` is one supervised loop (``llmesh.kernel.tasks``): it
starts the process on a free loopback port, waits until ``/health`` answers 200 (the
model is loaded), then watches the process and its ``/health``. An exit or a child
that stops answering is a crash: the loop raises, the kernel's supervisor restarts it
with backoff and holds liveness NOT_SERVING when it cannot recover. While the child
is not ready, readiness is NOT_SERVING (``on_ready``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmesh.kernel.logging import get_logger
from llmesh_inference.llamacpp.http import HttpError, request_json

log = get_logger(__name__)

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ChildOptions:
    """How the child runs (also used by the benchmark for the reference llama-server)."""

    binary: Path
    gguf: Path
    alias: str
    threads: int
    parallel: int
    ctx_size: int
    extra_args: tuple[str, ...] = field(default=())

    def args(self, port: int) -> list[str]:
        """The command line: continuous batching over ``parallel`` slots sharing one KV
        cache of ``ctx_size`` tokens, loopback only, no web UI."""
        return [
            str(self.binary),
            "--model", str(self.gguf),
            "--alias", self.alias,
            "--host", HOST,
            "--port", str(port),
            "--threads", str(self.threads),
            "--threads-batch", str(self.threads),
            "--parallel", str(self.parallel),
            "--ctx-size", str(self.ctx_size),
            "--kv-unified",
            "--no-webui",
            *self.extra_args,
        ]  # fmt: skip


class ChildExited(RuntimeError):
    """The child exited or stopped answering (a crash of the supervised loop)."""


def _die_with_parent() -> None:
    """In the forked child (Linux): SIGKILL when the worker dies, even by SIGKILL, so no
    llama-server outlives its worker."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LlamaServerChild:
    """One llama-server process at a time, restarted by the kernel's supervisor."""

    def __init__(
        self,
        options: ChildOptions,
        *,
        on_ready: Callable[[bool], Awaitable[None]] | None = None,
        start_timeout_s: float = 120.0,
        probe_interval_s: float = 2.0,
        probe_failures: int = 3,
    ) -> None:
        self.options = options
        self._on_ready = on_ready
        self.start_timeout_s = start_timeout_s
        self.probe_interval_s = probe_interval_s
        self.probe_failures = probe_failures
        self.port = 0
        self.ready = False
        self.pid: int | None = None
        self.starts = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=20)

    @property
    def address(self) -> tuple[str, int]:
        return HOST, self.port

    async def _set_ready(self, ready: bool) -> None:
        if ready == self.ready:
            return
        self.ready = ready
        if self._on_ready is not None:
            await self._on_ready(ready)

    async def _healthy(self, within_s: float) -> bool:
        try:
            async with asyncio.timeout(within_s):
                await request_json(HOST, self.port, "GET", "/health")
        except (OSError, TimeoutError, HttpError, ConnectionError):
            return False
        return True

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self._tail.append(text)
            log.debug("llama-server: %s", text)

    def _exited(self, what: str) -> ChildExited:
        tail = " | ".join(list(self._tail)[-5:])
        return ChildExited(f"llama-server {what}; last output: {tail or '(none)'}")

    async def run(self) -> None:
        """Start the child and watch it; returns only by cancellation, raises on a crash."""
        self.port = free_port()
        self.starts += 1
        proc = await asyncio.create_subprocess_exec(
            *self.options.args(self.port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C to the worker's group is the worker's to relay
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.pid = proc.pid
        assert proc.stderr is not None
        reader = asyncio.create_task(self._read_stderr(proc.stderr), name="llama-server-stderr")
        exited = asyncio.create_task(proc.wait(), name="llama-server-wait")
        log.info(
            "llama-server starting (pid %d, port %d, %d threads, %d slots, %s)",
            proc.pid,
            self.port,
            self.options.threads,
            self.options.parallel,
            self.options.gguf.name,
        )
        try:
            await self._wait_started(exited)
            await self._set_ready(True)
            log.info("llama-server ready (pid %d)", proc.pid)
            await self._watch(exited)
        finally:
            await self._set_ready(False)
            await self._terminate(proc)
            reader.cancel()
            exited.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _wait_started(self, exited: asyncio.Task[int]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.start_timeout_s
        delay = 0.05
        while not await self._healthy(2.0):
            if exited.done():
                raise self._exited(f"exited with status {exited.result()} while starting")
            if loop.time() > give_up:
                raise self._exited(f"not ready after {self.start_timeout_s:.0f} s")
            await asyncio.wait({exited}, timeout=delay)
            delay = min(delay * 2, 0.5)

    async def _watch(self, exited: asyncio.Task[int]) -> None:
        failures = 0
        while True:
            done, _ = await asyncio.wait({exited}, timeout=self.probe_interval_s)
            if done:
                raise self._exited(f"exited with status {exited.result()}")
            if await self._healthy(self.probe_interval_s):
                failures = 0
                continue
            failures += 1
            if failures >= self.probe_failures:
                raise self._exited(f"stopped answering /health ({failures} probes)")

    @staticmethod
    async def _terminate(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
