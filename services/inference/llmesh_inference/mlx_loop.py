"""The MLX thread: one loop turn runs commands, reaps, admits, steps, and flushes events.

Everything that touches MLX runs on this one thread. Events leave it in one
batched ``call_soon_threadsafe`` per event loop per turn, and a cancelled or
expired request is removed before the next step computes a token for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from typing import Any

from llmesh.kernel.errors import DeadlineExceeded, Unavailable
from llmesh.kernel.logging import get_logger
from llmesh.kernel.tasks import SupervisedThread
from llmesh_inference.engine_core import EngineCore
from llmesh_inference.events import (
    CONTEXT_FULL,
    EOS,
    LENGTH,
    STOP,
    ActiveRequest,
    Chunk,
    Command,
    Event,
    Failed,
    deliver,
)
from llmesh_inference.models import LoadedModel

log = get_logger("llmesh_inference.scheduler")

# While generations run, commands get at most this much of each loop turn.
COMMAND_BUDGET_S = 0.05


def _settle_error(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class MlxLoop(EngineCore):
    """Starts, runs and stops the single MLX thread."""

    def start(self) -> None:
        """Start the MLX thread (call on the event loop that serves the requests).

        It runs under the kernel's ``SupervisedThread``: a crash is logged with its
        stack, every queued and running request fails at once with UNAVAILABLE +
        RetryInfo, new work is refused the same way, and liveness goes NOT_SERVING.
        It is not restarted: MLX and batch state after a crash are unknown, so the
        process should be replaced (Kubernetes does that on a failed liveness probe).
        """
        self._thread = SupervisedThread(
            "mlx", self._run, health=self._health, on_crash=self._on_crash
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued work and stop the thread (running requests end as cancelled)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        import mlx.core as mx

        log.info("MLX thread started on %s", mx.default_device())
        try:
            self._loop()
        finally:
            # MLX keeps per-thread streams whose thread-local destructors run after
            # this thread has left Python; if the interpreter is finalizing by then,
            # they abort the process ("terminate called without an active exception",
            # exit -6; issue 19 finding 6). Finish the work and free them here, while
            # Python is alive (MLX's own advice for threads that use it).
            with contextlib.suppress(Exception):
                mx.synchronize()
            with contextlib.suppress(Exception):
                mx.clear_streams()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._has_work_locked():
                    self.busy = False
                    self._cond.wait(timeout=1.0)
                    self.last_progress = time.monotonic()
                if self._stopping:
                    break
                woke = self._has_work_locked()
                self.busy = woke
                commands = list(self._commands)
                self._commands.clear()
                self._cancel_flag = False
            if not woke:
                self._unload_idle()  # outside the lock: unloading may take a while
                continue
            turn = self.last_progress = time.monotonic()
            self._run_commands(commands)
            self._reap()
            self._shed()
            self._admit()
            if self._step():
                with self._cond:
                    self.pace.observe_step(time.monotonic() - turn)
            self._flush()
        self._shutdown()
        self._flush()

    def _flush(self) -> None:
        """Deliver this iteration's events: one wake-up per event loop, not one per token."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[ActiveRequest, Event]]] = {}
        for active, event in self._outbox:
            by_loop.setdefault(active.loop, []).append((active, event))
        self._outbox.clear()
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(deliver, items)
            except RuntimeError:  # that event loop is closed: its callers are gone
                continue

    def _run_commands(self, commands: list[Command]) -> None:
        """Run this turn's commands; while generations run, only for ``COMMAND_BUDGET_S``.

        Commands (embeddings, model loads) share the thread with decoding: without a
        budget a backlog of embeddings ran whole before the next decode step and starved
        every stream (200 mixed clients: no token for 10 s at a time, every generation
        past its deadline). What is left over goes back to the front of the queue.
        """
        ends = time.monotonic() + COMMAND_BUDGET_S
        for i, command in enumerate(commands):
            if self._running and time.monotonic() > ends:
                with self._cond:
                    self._commands.extendleft(reversed(commands[i:]))
                return
            self._run_command(command)

    def _run_command(self, command: Command) -> None:
        if command.future.cancelled():  # its caller is gone (cancelled, deadline): no work
            return

        def settle(result: Any = None, error: BaseException | None = None) -> None:
            if command.future.done():
                return
            if error is not None:
                command.future.set_exception(error)
            else:
                command.future.set_result(result)

        try:
            result = command.fn()
        except Exception as exc:
            command.loop.call_soon_threadsafe(settle, None, exc)
        else:
            command.loop.call_soon_threadsafe(settle, result)
        self.last_progress = time.monotonic()

    def _shutdown(self) -> None:
        self._fail_all(lambda: Unavailable("worker is shutting down", retry_after_s=1.0))

    def _on_crash(self, exc: BaseException) -> None:
        """On the dying MLX thread: refuse new work, fail all work in hand, deliver now."""
        with self._cond:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.busy = False
        self._fail_all(self.failed_error)
        self._flush()

    def _fail_all(self, error: Callable[[], Unavailable]) -> None:
        with self._cond:
            pending = list(self._pending) + list(self._running.values())
            self._pending.clear()
            self._running.clear()
            commands = list(self._commands)
            self._commands.clear()
        for active in pending:
            active.done = True
            active.emit(Failed(error()))
        for command in commands:
            with contextlib.suppress(RuntimeError):  # that event loop is closed
                command.loop.call_soon_threadsafe(_settle_error, command.future, error())

    def _reap(self) -> None:
        """Remove cancelled and expired requests before the next step runs."""
        now = time.monotonic()

        def expired(a: ActiveRequest) -> bool:
            return a.cancelled or (a.req.deadline is not None and now >= a.req.deadline)

        if now >= self._next_idle_check:
            self._next_idle_check = now + 1.0
            self._unload_idle()
        with self._cond:
            dropped_pending = [a for a in self._pending if expired(a)]
            if dropped_pending:
                self._pending = collections.deque(a for a in self._pending if not expired(a))
            dropped_running = [a for a in self._running.values() if expired(a)]
        for active in dropped_pending:
            with self._cond:
                self._finish(active, "cancelled", cancelled=True)
            self._tell_expired(active)
        for active in dropped_running:
            assert active.model is not None and active.uid is not None
            active.model.generator.remove([active.uid])
            with self._cond:
                self._finish(active, "cancelled", cancelled=True)
            self._tell_expired(active)
        if dropped_pending or dropped_running:
            log.info(
                "removed %d cancelled or expired requests",
                len(dropped_pending) + len(dropped_running),
            )

    @staticmethod
    def _tell_expired(active: ActiveRequest) -> None:
        if not active.cancelled:
            active.emit(
                Failed(
                    DeadlineExceeded(
                        f"deadline passed after {active.completion_tokens} tokens",
                        metadata={"tokens_delivered": str(active.completion_tokens)},
                    )
                )
            )

    def _step(self) -> bool:
        """One ``next()`` per model with work: a decode step plus a prefill chunk.

        True when a token was generated (the turn counts for the forecast's pace)."""
        models = {a.model.name: a.model for a in self._running.values() if a.model is not None}
        decoded = False
        for model in models.values():
            started = time.monotonic()
            _prompt, generated = model.generator.next()
            now = time.monotonic()
            self.last_progress = now
            if not generated:
                continue
            decoded = True
            with self._cond:
                self.decode_steps_total += 1
                self.tokens_generated_total += len(generated)
                self.batch_size = len(generated)
                self._rate.append((now, len(generated)))
            self.metrics.step(len(generated), now - started)
            for response in generated:
                self._on_token(model, response, now)
            if self.decode_delay_s > 0:
                time.sleep(self.decode_delay_s)  # the MLX thread's own pace; see EngineCore
        return decoded

    def _on_token(self, model: LoadedModel, response: Any, now: float) -> None:
        active = self._running.get((model.name, response.uid))
        if active is None or active.done:
            return
        assert active.stream is not None
        if not active.first_token_at:
            active.first_token_at = now
            active.timestamps["first_token"] = now
            self.metrics.first_token(now - active.admitted_at)
        else:
            self.metrics.inter_token(now - active.last_token_at)
        active.last_token_at = now
        reason = response.finish_reason
        token = int(response.token)
        active.completion_tokens += 1
        if reason == "stop":  # an end-of-sequence token: not part of the text
            text = active.stream.finish()
            ids: list[int] = []
        else:
            text = active.stream.add(token)
            ids = [token]
        if active.stream.stopped:
            if reason is None:
                model.generator.remove([response.uid])
            with self._cond:
                self._finish(active, STOP, text=text, token_ids=ids)
            return
        if reason is not None:
            if reason != "stop":
                text += active.stream.finish()
            final = (
                EOS if reason == "stop" else (CONTEXT_FULL if active.context_limited else LENGTH)
            )
            with self._cond:
                self._finish(active, final, text=text, token_ids=ids)
            return
        active.emit(Chunk(text, ids))
