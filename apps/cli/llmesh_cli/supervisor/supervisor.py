"""The supervisor: start children, wait until ready, restart crashes, drain on exit."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from llmesh_cli.supervisor.child import Child, tail
from llmesh_cli.supervisor.plan import ServiceSpec
from llmesh_cli.supervisor.probe import SERVING, ready_state
from llmesh_cli.supervisor.restart import RestartPolicy
from llmesh_cli.supervisor.state import ServiceRecord, UpState, clear_state, write_state

Say = Callable[[str], None]


class Supervisor:
    """Runs ``specs`` as child processes until :meth:`request_stop`."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        home: Path,
        say: Say,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        grace_s: float = 15.0,
        ready_poll_s: float = 0.25,
        profile: str = "local",
        key_store_url: str | None = None,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self._policies = {child.spec.name: policy() for child in self.children}
        self._status = {child.spec.name: "starting" for child in self.children}
        self._home = home
        self._say = say
        self._grace_s = grace_s
        self._ready_poll_s = ready_poll_s
        self._profile = profile
        self._key_store_url = key_store_url
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready_tasks: set[asyncio.Task[bool]] = set()

    # -- public -------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: drain. Second call: kill at once."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    async def start(self) -> dict[str, bool]:
        """Start every child, then wait (concurrently) until each is ready.

        A gate child (a backing server) is waited for before the children after it
        start; when it does not become ready, those are not started (reported False).
        """
        ready: dict[str, bool] = {}
        waiting: list[Child] = []
        for child in self.children:
            name = child.spec.name
            if not all(ready.values()):
                ready[name] = False
                self._status[name] = "not started"
                continue
            await child.start()
            self._status[name] = "starting"
            self._save()
            self._tasks.append(
                asyncio.create_task(self._supervise(child), name=f"supervise-{name}")
            )
            if child.spec.gate:
                ready[name] = await self._wait_ready(child)
            else:
                waiting.append(child)
        results = await asyncio.gather(*(self._wait_ready(child) for child in waiting))
        ready.update({child.spec.name: ok for child, ok in zip(waiting, results, strict=True)})
        return {child.spec.name: ready[child.spec.name] for child in self.children}

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Drain children in reverse start order within one grace period; kill the rest."""
        self._stop.set()
        deadline = time.monotonic() + self._grace_s
        for child in reversed(self.children):
            if not child.running:
                continue
            self._say(f"stopping {child.spec.name} (pid {child.pid})")
            left = 0.0 if self._force.is_set() else deadline - time.monotonic()
            stop = asyncio.create_task(child.stop(grace_s=left))
            force = asyncio.create_task(self._force.wait())
            done, _ = await asyncio.wait({stop, force}, return_when=asyncio.FIRST_COMPLETED)
            if stop not in done:
                child.signal_group(signal.SIGKILL)
                await stop
            force.cancel()
            code = stop.result()
            if code not in (0, None):
                self._say(f"{child.spec.name} exited with code {code}")
            self._status[child.spec.name] = "stopped"
        for task in (*self._tasks, *self._ready_tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._ready_tasks, return_exceptions=True)
        clear_state(self._home)

    def records(self) -> list[ServiceRecord]:
        return [
            ServiceRecord(
                name=child.spec.name,
                address=child.spec.address,
                pid=child.pid if child.running else None,
                log=str(child.spec.log_file),
                status=self._status[child.spec.name],
                probe=child.spec.probe,
            )
            for child in self.children
        ]

    def restarts(self, name: str) -> int:
        child = next(c for c in self.children if c.spec.name == name)
        return max(0, child.starts - 1)

    # -- internals ----------------------------------------------------------

    def _save(self) -> None:
        write_state(
            self._home,
            UpState(
                supervisor_pid=os.getpid(),
                services=self.records(),
                profile=self._profile,
                key_store_url=self._key_store_url,
            ),
        )

    async def _wait_ready(self, child: Child) -> bool:
        """Poll the child's readiness until SERVING, its exit, or its start timeout."""
        started = time.monotonic()
        deadline = started + child.spec.start_timeout_s
        process = child.process
        while time.monotonic() < deadline and not self._stop.is_set():
            if child.process is not process or not child.running:
                return False
            if await ready_state(child.spec.probe, child.spec.address) == SERVING:
                self._status[child.spec.name] = "running"
                self._save()
                self._say(
                    f"{child.spec.name} ready on {child.spec.address} "
                    f"(pid {child.pid}, {time.monotonic() - started:.1f}s)"
                )
                return True
            await asyncio.sleep(self._ready_poll_s)
        if not self._stop.is_set() and child.running:
            self._say(
                f"{child.spec.name} not ready after {child.spec.start_timeout_s:.0f}s "
                f"(log: {child.spec.log_file})"
            )
        return False

    async def _supervise(self, child: Child) -> None:
        """Restart ``child`` whenever it exits unexpectedly, with backoff and a circuit."""
        name = child.spec.name
        policy = self._policies[name]
        while True:
            code = await child.wait()
            if self._stop.is_set():
                return
            ran = time.monotonic() - child.started_at
            self._say(f"{name} (pid {child.pid}) exited with code {code} after {ran:.1f}s")
            last = tail(child.spec.log_file)
            if last:
                self._say(f"  last log lines of {name}:\n{last}")
            delay = policy.on_crash(now=time.monotonic(), ran_for_s=ran)
            if delay is None:
                self._status[name] = "failed"
                self._save()
                self._say(
                    f"{name} crashed {policy.recent_crashes} times within "
                    f"{policy.window_s:.0f}s: not restarting it (log: {child.spec.log_file})"
                )
                return
            self._status[name] = "restarting"
            self._save()
            self._say(f"restarting {name} in {delay:g}s")
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
                return  # stopping during the backoff
            except TimeoutError:
                pass
            await child.start()
            self._status[name] = "starting"
            self._save()
            ready = asyncio.create_task(self._wait_ready(child), name=f"ready-{name}")
            self._ready_tasks.add(ready)
            ready.add_done_callback(self._ready_tasks.discard)
