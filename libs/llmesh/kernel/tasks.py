"""Supervised background work: every long-lived loop of a service runs under one helper.

:class:`Supervisor` runs asyncio loops; :class:`SupervisedThread` runs a loop on a
dedicated thread. Both log a crash once with its stack, restart with exponential
backoff (bounded), and hold the ``liveness`` health NOT_SERVING (through
:class:`~llmesh.kernel.health.HealthReporter`, one part per loop) while a loop
cannot recover: ``max_crashes`` crashes within ``window_s``, or a thread that is
not restarted. A restarted loop that then runs ``stable_after_s`` without crashing
counts as recovered: its part of liveness is SERVING again and backoff starts over.

A loop that returns normally is finished (a one-shot job such as a warm-up); a
crash is any ``Exception``. ``stop()`` cancels and awaits everything, so shutdown
leaves no task behind and logs no error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from llmesh.kernel.health import HealthReporter
from llmesh.kernel.logging import get_logger

log = get_logger("llmesh.tasks")

Clock = Callable[[], float]


@dataclass(frozen=True)
class RestartPolicy:
    """How a supervised loop is restarted and when it counts as unrecoverable."""

    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_crashes: int = 5
    """Crashes within ``window_s`` after which liveness goes NOT_SERVING."""
    window_s: float = 60.0
    stable_after_s: float = 10.0
    """A run this long without a crash resets backoff and restores liveness."""
    restart: bool = True
    """False: one crash is final (liveness NOT_SERVING until the process is replaced)."""


class _CrashBook:
    """Crash accounting shared by the task and the thread flavours."""

    def __init__(self, name: str, policy: RestartPolicy, clock: Clock) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._recent: collections.deque[float] = collections.deque()
        self.backoff_s = policy.min_backoff_s
        self.crashes = 0
        self.restarts = 0
        self.last_error: BaseException | None = None
        self.failing = False

    def crashed(self, exc: BaseException, ran_s: float) -> bool:
        """Record a crash, log it with its stack; True when the loop cannot recover."""
        now = self._clock()
        if ran_s >= self.policy.stable_after_s:
            self.backoff_s = self.policy.min_backoff_s
        self._recent.append(now)
        while self._recent and self._recent[0] < now - self.policy.window_s:
            self._recent.popleft()
        self.crashes += 1
        self.last_error = exc
        hopeless = not self.policy.restart or len(self._recent) >= self.policy.max_crashes
        then = "not restarted" if not self.policy.restart else f"restart in {self.backoff_s:.1f}s"
        log.error(
            "background loop %s crashed (%d in the last %.0fs; %s): %s: %s",
            self.name,
            len(self._recent),
            self.policy.window_s,
            then,
            type(exc).__name__,
            exc,
            exc_info=exc,
            extra={"task": self.name, "crashes": self.crashes},
        )
        return hopeless

    def next_backoff(self) -> float:
        wait = self.backoff_s
        self.backoff_s = min(self.policy.max_backoff_s, self.backoff_s * 2)
        self.restarts += 1
        return wait

    def recovered(self) -> None:
        self._recent.clear()
        self.backoff_s = self.policy.min_backoff_s


class SupervisedTask:
    """One asyncio loop under supervision; made by :meth:`Supervisor.spawn`."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        policy: RestartPolicy,
        health: HealthReporter | None,
        clock: Clock,
    ) -> None:
        self.name = name
        self._factory = factory
        self._health = health
        self._clock = clock
        self.book = _CrashBook(name, policy, clock)
        self.task: asyncio.Task[None] = asyncio.create_task(
            self._supervise(), name=f"supervise-{name}"
        )

    @property
    def crashes(self) -> int:
        return self.book.crashes

    @property
    def restarts(self) -> int:
        return self.book.restarts

    @property
    def failing(self) -> bool:
        """True while this loop holds liveness NOT_SERVING."""
        return self.book.failing

    async def _set_failing(self, failing: bool) -> None:
        if failing == self.book.failing:
            return
        self.book.failing = failing
        if failing:
            log.error(
                "background loop %s cannot recover: liveness NOT_SERVING",
                self.name,
                extra={"task": self.name},
            )
        else:
            self.book.recovered()
            log.warning(
                "background loop %s recovered: liveness SERVING",
                self.name,
                extra={"task": self.name},
            )
        if self._health is not None:
            await self._health.set_live(not failing, part=self.name)

    async def _supervise(self) -> None:
        policy = self.book.policy
        while True:
            started = self._clock()
            child = asyncio.create_task(self._run_once(), name=self.name)
            try:
                if self.book.failing:
                    done, _ = await asyncio.wait({child}, timeout=policy.stable_after_s)
                    if not done:
                        await self._set_failing(False)
                error = await child
            except asyncio.CancelledError:
                child.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await child
                raise
            if error is None:
                await self._set_failing(False)
                return
            if self.book.crashed(error, self._clock() - started):
                await self._set_failing(True)
            if not policy.restart:
                return
            await asyncio.sleep(self.book.next_backoff())

    async def _run_once(self) -> BaseException | None:
        """Run the loop; its exception (a crash) is returned, not raised."""
        try:
            await self._factory()
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            return exc  # the loop cancelled itself: a crash like any other
        except Exception as exc:
            return exc
        return None

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Supervisor:
    """Owns a service's background loops: spawn them, stop them all at shutdown."""

    def __init__(
        self,
        *,
        health: HealthReporter | None = None,
        policy: RestartPolicy | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._health = health
        self._policy = policy or RestartPolicy()
        self._clock = clock
        self.tasks: dict[str, SupervisedTask] = {}

    def spawn(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        policy: RestartPolicy | None = None,
    ) -> SupervisedTask:
        """Run ``factory()`` now and again after each crash; ``name`` is unique per service."""
        if name in self.tasks and not self.tasks[name].task.done():
            raise ValueError(f"a background loop named {name!r} is already running")
        supervised = SupervisedTask(
            name,
            factory,
            policy=policy or self._policy,
            health=self._health,
            clock=self._clock,
        )
        self.tasks[name] = supervised
        return supervised

    async def stop(self) -> None:
        """Cancel every loop and wait for each to finish (cancellation-clean)."""
        tasks = list(self.tasks.values())
        for supervised in tasks:
            supervised.task.cancel()
        for supervised in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await supervised.task


class SupervisedThread:
    """A loop on a dedicated daemon thread, with the same crash handling.

    ``on_crash`` runs on the thread right after a crash is logged (e.g. to fail the
    requests the loop was serving). With ``policy.restart`` false (the default) a
    crash is final: the thread's state is unknown, so liveness goes NOT_SERVING and
    the process should be replaced. Liveness is reported on the event loop that
    called :meth:`start`.
    """

    def __init__(
        self,
        name: str,
        target: Callable[[], None],
        *,
        health: HealthReporter | None = None,
        on_crash: Callable[[BaseException], None] | None = None,
        policy: RestartPolicy | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self._target = target
        self._health = health
        self._on_crash = on_crash
        self._clock = clock
        self.book = _CrashBook(name, policy or RestartPolicy(restart=False), clock)
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def crashes(self) -> int:
        return self.book.crashes

    @property
    def failed(self) -> bool:
        """True once the thread crashed and will not (or cannot yet) run again."""
        return self.book.failing

    def start(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Stop restarting and wait for the thread (the target must return by itself)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _report(self, failing: bool) -> None:
        if failing == self.book.failing:
            return
        self.book.failing = failing
        if failing:
            log.error(
                "background thread %s cannot recover: liveness NOT_SERVING",
                self.name,
                extra={"task": self.name},
            )
        else:
            self.book.recovered()
        health, loop = self._health, self._loop
        if health is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody to tell
            asyncio.run_coroutine_threadsafe(health.set_live(not failing, part=self.name), loop)

    def _main(self) -> None:
        policy = self.book.policy
        while not self._stop.is_set():
            started = self._clock()
            try:
                self._target()
            except Exception as exc:
                hopeless = self.book.crashed(exc, self._clock() - started)
                if self._on_crash is not None:
                    try:
                        self._on_crash(exc)
                    except Exception:
                        log.exception("crash handler of %s failed", self.name)
                if hopeless:
                    self._report(True)
                if not policy.restart or self._stop.wait(self.book.next_backoff()):
                    return
                continue
            return
