"""Continuous batching on one dedicated MLX thread.

Everything that touches MLX (loading, prefill, decode, embeddings) runs on the
thread started by :class:`Engine`. The asyncio side only appends to queues under
a short lock and receives events through ``loop.call_soon_threadsafe``; it never
waits for MLX.

Each loop iteration: run queued commands (load, unload, embed), drop cancelled
or expired requests, admit queued requests into their model's mlx-lm
``BatchGenerator`` while batch slots are free, then run one ``next()`` on every
generator with work: one decode step for the running requests plus one prefill
chunk for the joining ones. Requests therefore join and leave between steps, and
a cancelled request is removed before the next step computes a token for it.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmesh.kernel.errors import (
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    LlmeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from llmesh.kernel.logging import get_logger
from llmesh_inference.metrics import InferenceMetrics
from llmesh_inference.models import LoadedModel, ModelStore
from llmesh_inference.sampling import SamplingOptions, make_sampler
from llmesh_inference.textstream import TextStream

log = get_logger(__name__)

T = TypeVar("T")

EOS = "eos"
LENGTH = "length"
STOP = "stop_sequence"
CONTEXT_FULL = "context_full"


@dataclass
class Chunk:
    """Text and token ids generated since the previous chunk."""

    text: str
    token_ids: list[int]


@dataclass
class Finished:
    """The end of a generation."""

    reason: str
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    queue_ms: float


@dataclass
class Failed:
    """The request was rejected after admission (e.g. its prompt is too long)."""

    error: LlmeshError


Event = Chunk | Finished | Failed


@dataclass
class GenerationRequest:
    """One Generate call as the MLX thread sees it."""

    model: str
    options: SamplingOptions
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deadline: float | None = None
    """``time.monotonic()`` after which the request is dropped."""


@dataclass
class _Active:
    req: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    admitted_at: float = field(default_factory=time.monotonic)
    inserted_at: float = 0.0
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled: bool = False
    done: bool = False
    uid: int | None = None
    model: LoadedModel | None = None
    stream: TextStream | None = None
    max_tokens: int = 0
    context_limited: bool = False
    pending_ids: list[int] = field(default_factory=list)
    timestamps: dict[str, float] = field(default_factory=dict)

    outbox: list[tuple[_Active, Event]] | None = None

    def emit(self, event: Event) -> None:
        """Queue ``event`` for delivery at the end of the MLX thread's iteration."""
        if self.outbox is None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        else:
            self.outbox.append((self, event))


def _deliver(items: list[tuple[_Active, Event]]) -> None:
    for active, event in items:
        active.queue.put_nowait(event)


class RequestHandle:
    """What the servicer holds for one request: its events and a way to cancel it."""

    def __init__(self, engine: Engine, active: _Active) -> None:
        self._engine = engine
        self._active = active

    @property
    def request_id(self) -> str:
        return self._active.req.request_id

    @property
    def timestamps(self) -> dict[str, float]:
        """Monotonic times: admitted, inserted, first_token, finished."""
        return dict(self._active.timestamps)

    async def next_event(self) -> Event:
        return await self._active.queue.get()

    def drain(self) -> list[Event]:
        """Events already delivered, without waiting."""
        out: list[Event] = []
        while True:
            try:
                out.append(self._active.queue.get_nowait())
            except asyncio.QueueEmpty:
                return out

    def cancel(self) -> None:
        self._engine.cancel(self._active)


@dataclass
class EngineStats:
    """A consistent snapshot of the scheduler's counters."""

    active_requests: int
    queued_requests: int
    batch_size: int
    max_batch_size: int
    queue_capacity: int
    tokens_per_second: float
    tokens_generated_total: int
    decode_steps_total: int
    requests_completed_total: int
    requests_cancelled_total: int
    requests: list[tuple[str, str, int, bool]]
    uptime_seconds: float


@dataclass
class _Command:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class Engine:
    """The single MLX thread, its request queue and its counters."""

    def __init__(
        self,
        store: ModelStore,
        *,
        max_batch_size: int,
        queue_capacity: int,
        idle_unload_s: float = 0.0,
        pinned: Callable[[], set[str]] = set,
        metrics: InferenceMetrics | None = None,
    ) -> None:
        self.store = store
        self.max_batch_size = max_batch_size
        self.queue_capacity = queue_capacity
        self.idle_unload_s = idle_unload_s
        self._pinned = pinned
        self.metrics = metrics or InferenceMetrics()
        self._cond = threading.Condition()
        self._pending: collections.deque[_Active] = collections.deque()
        self._commands: collections.deque[_Command] = collections.deque()
        self._running: dict[tuple[str, int], _Active] = {}
        self._cancel_flag = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self.last_progress = time.monotonic()
        self.busy = False
        # Counters (written by the MLX thread; read under the condition's lock).
        self.tokens_generated_total = 0
        self.decode_steps_total = 0
        self.requests_completed_total = 0
        self.requests_cancelled_total = 0
        self.batch_size = 0
        self._rate: collections.deque[tuple[float, int]] = collections.deque()
        self._next_idle_check = 0.0
        self._outbox: list[tuple[_Active, Event]] = []

    # ----- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlx", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued work and stop the thread (running requests end as cancelled)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ----- asyncio side ---------------------------------------------------------------

    def submit(self, req: GenerationRequest) -> RequestHandle:
        """Queue a request; raises ``ResourceExhausted`` when the queue is full."""
        loop = asyncio.get_running_loop()
        active = _Active(req=req, loop=loop, queue=asyncio.Queue(), outbox=self._outbox)
        active.timestamps["admitted"] = active.admitted_at
        with self._cond:
            if self._stopping:
                raise Unavailable("worker is shutting down", retry_after_s=1.0)
            free = max(0, self.max_batch_size - len(self._running))
            if len(self._pending) >= self.queue_capacity + free:
                rate = self._tokens_per_second_locked()
                retry = max(0.5, min(30.0, (len(self._pending) + 1) * 32 / max(rate, 1.0)))
                raise ResourceExhausted(
                    f"inference queue is full ({self.queue_capacity} waiting)",
                    reason="QUEUE_FULL",
                    retry_after_s=round(retry, 2),
                    metadata={"queue_capacity": str(self.queue_capacity)},
                )
            self._pending.append(active)
            self.metrics.queue_depth(len(self._pending))
            self._cond.notify_all()
        return RequestHandle(self, active)

    def cancel(self, active: _Active) -> None:
        with self._cond:
            if active.done or active.cancelled:
                return
            active.cancelled = True
            self._cancel_flag = True
            self._cond.notify_all()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the MLX thread and await its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._cond:
            if self._stopping:
                raise Unavailable("worker is shutting down", retry_after_s=1.0)
            self._commands.append(_Command(fn, loop, future))
            self._cond.notify_all()
        return await future

    def has_work(self) -> bool:
        with self._cond:
            return bool(self._pending or self._running or self._commands)

    def stats(self) -> EngineStats:
        with self._cond:
            requests = [
                (a.req.request_id, a.req.model, a.completion_tokens, False)
                for a in self._running.values()
            ] + [(a.req.request_id, a.req.model, 0, True) for a in self._pending]
            return EngineStats(
                active_requests=len(self._running),
                queued_requests=len(self._pending),
                batch_size=self.batch_size,
                max_batch_size=self.max_batch_size,
                queue_capacity=self.queue_capacity,
                tokens_per_second=self._tokens_per_second_locked(),
                tokens_generated_total=self.tokens_generated_total,
                decode_steps_total=self.decode_steps_total,
                requests_completed_total=self.requests_completed_total,
                requests_cancelled_total=self.requests_cancelled_total,
                requests=requests,
                uptime_seconds=time.monotonic() - self._started,
            )

    def _tokens_per_second_locked(self, window: float = 5.0) -> float:
        now = time.monotonic()
        while self._rate and self._rate[0][0] < now - window:
            self._rate.popleft()
        if not self._rate:
            return 0.0
        span = max(now - self._rate[0][0], 1.0)
        return sum(n for _, n in self._rate) / span

    # ----- MLX thread -------------------------------------------------------------------

    def _run(self) -> None:
        import mlx.core as mx

        log.info("MLX thread started on %s", mx.default_device())
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
            self.last_progress = time.monotonic()
            for command in commands:
                self._run_command(command)
            self._reap()
            self._admit()
            self._step()
            self._flush()
        self._shutdown()
        self._flush()

    def _flush(self) -> None:
        """Deliver this iteration's events: one wake-up per event loop, not one per token."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Active, Event]]] = {}
        for active, event in self._outbox:
            by_loop.setdefault(active.loop, []).append((active, event))
        self._outbox.clear()
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: its callers are gone
                continue

    def _has_work_locked(self) -> bool:
        return bool(
            self._stopping or self._commands or self._pending or self._running or self._cancel_flag
        )

    def _run_command(self, command: _Command) -> None:
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
        with self._cond:
            pending = list(self._pending) + list(self._running.values())
            self._pending.clear()
            self._running.clear()
            commands = list(self._commands)
            self._commands.clear()
        for active in pending:
            active.done = True
            active.emit(Failed(Unavailable("worker is shutting down", retry_after_s=1.0)))
        for command in commands:
            command.loop.call_soon_threadsafe(
                command.future.set_exception, Unavailable("worker is shutting down")
            )

    def _finish(
        self,
        active: _Active,
        reason: str,
        *,
        cancelled: bool = False,
        text: str = "",
        token_ids: list[int] | None = None,
    ) -> None:
        now = time.monotonic()
        active.done = True
        active.timestamps["finished"] = now
        if active.model is not None:
            active.model.requests -= 1
            active.model.last_used = now
        if active.uid is not None and active.model is not None:
            self._running.pop((active.model.name, active.uid), None)
        if cancelled:
            self.requests_cancelled_total += 1
            self.metrics.finished("cancelled")
            return
        self.requests_completed_total += 1
        self.metrics.finished(reason)
        first = active.first_token_at or now
        inserted = active.inserted_at or now
        active.emit(
            Finished(
                reason=reason,
                text=text,
                token_ids=token_ids or [],
                prompt_tokens=active.prompt_tokens,
                completion_tokens=active.completion_tokens,
                ttft_ms=(first - active.admitted_at) * 1000,
                total_ms=(now - active.admitted_at) * 1000,
                queue_ms=(inserted - active.admitted_at) * 1000,
            )
        )

    def _reap(self) -> None:
        """Remove cancelled and expired requests before the next step runs."""
        now = time.monotonic()

        def expired(a: _Active) -> bool:
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
    def _tell_expired(active: _Active) -> None:
        if not active.cancelled:
            active.emit(
                Failed(
                    DeadlineExceeded(
                        f"deadline passed after {active.completion_tokens} tokens",
                        metadata={"tokens_delivered": str(active.completion_tokens)},
                    )
                )
            )

    def _admit(self) -> None:
        """Move queued requests into their model's batch while slots are free."""
        while True:
            with self._cond:
                if not self._pending or len(self._running) >= self.max_batch_size:
                    self.metrics.queue_depth(len(self._pending))
                    return
                active = self._pending.popleft()
            try:
                self._insert(active)
            except LlmeshError as exc:
                with self._cond:
                    if active.model is not None:
                        active.model.requests -= 1
                    active.done = True
                active.emit(Failed(exc))
            except Exception as exc:
                log.exception("admitting request %s failed", active.req.request_id)
                with self._cond:
                    if active.model is not None:
                        active.model.requests -= 1
                    active.done = True
                active.emit(Failed(Unavailable(f"request failed on the worker: {exc}")))

    def _insert(self, active: _Active) -> None:
        req = active.req
        model = self.store.get(req.model)
        if model is None:
            busy = {m.name for m in self.store.loaded() if m.requests} | self._pinned()
            model, _evicted, _ms = self.store.load(req.model, protect=busy)
        self.store.touch(model)
        model.requests += 1
        active.model = model
        tokens = self._tokenize(model, req)
        active.prompt_tokens = len(tokens)
        room = model.context_length - len(tokens)
        if room < 1:
            field_name = "prompt" if req.prompt is not None else "messages"
            raise InvalidArgument(
                f"prompt has {len(tokens)} tokens; model {model.name} holds "
                f"{model.context_length} (prompt + at least one generated token)",
                reason="PROMPT_TOO_LONG",
                field_violations=[
                    FieldViolation(
                        field_name,
                        f"{len(tokens)} tokens; at most {model.context_length - 1} fit",
                    )
                ],
                metadata={"prompt_tokens": str(len(tokens))},
            )
        active.max_tokens = min(req.options.max_tokens, room)
        active.context_limited = active.max_tokens < req.options.max_tokens
        active.stream = TextStream(model.tokenizer.detokenizer, req.options.stop)
        sampler = make_sampler(req.options, model.vocab_size)
        (uid,) = model.generator.insert(
            [tokens], max_tokens=[active.max_tokens], samplers=[sampler]
        )
        now = time.monotonic()
        active.uid = uid
        active.inserted_at = now
        active.timestamps["inserted"] = now
        with self._cond:
            if active.cancelled:
                # Cancelled while being admitted: take it straight out again.
                model.generator.remove([uid])
                self._finish(active, "cancelled", cancelled=True)
                return
            self._running[(model.name, uid)] = active
        self.metrics.queue_wait(now - active.admitted_at)

    @staticmethod
    def _tokenize(model: LoadedModel, req: GenerationRequest) -> list[int]:
        tokenizer = model.tokenizer
        if req.messages is not None:
            if model.has_chat_template:
                ids = tokenizer.apply_chat_template(
                    req.messages, add_generation_prompt=True, tokenize=True
                )
                if isinstance(ids, dict):  # transformers BatchEncoding
                    ids = ids["input_ids"]
                return [int(t) for t in ids]
            text = "".join(f"{m['role']}: {m['content']}\n" for m in req.messages)
            text += "assistant: "
            return [int(t) for t in tokenizer.encode(text)]
        assert req.prompt is not None
        return [int(t) for t in tokenizer.encode(req.prompt)]

    def _step(self) -> None:
        """One ``next()`` per model with work: a decode step plus a prefill chunk."""
        models = {a.model.name: a.model for a in self._running.values() if a.model is not None}
        for model in models.values():
            started = time.monotonic()
            _prompt, generated = model.generator.next()
            now = time.monotonic()
            self.last_progress = now
            if not generated:
                continue
            with self._cond:
                self.decode_steps_total += 1
                self.tokens_generated_total += len(generated)
                self.batch_size = len(generated)
                self._rate.append((now, len(generated)))
            self.metrics.step(len(generated), now - started)
            for response in generated:
                self._on_token(model, response, now)

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

    def _unload_idle(self) -> None:
        """Unload models unused for ``idle_unload_s`` (never pinned ones)."""
        if self.idle_unload_s <= 0:
            return
        now = time.monotonic()
        pinned = self._pinned()
        for model in self.store.loaded():
            if (
                model.name not in pinned
                and model.requests == 0
                and now - model.last_used >= self.idle_unload_s
            ):
                try:
                    self.store.unload(model.name)
                except (NotFound, LlmeshError):
                    continue
                log.info("model %s unloaded after %.0fs idle", model.name, self.idle_unload_s)
