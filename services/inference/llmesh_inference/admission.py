"""Admission: the asyncio side's queue (bounded, cancellable, deadline-aware) and the
move into a batch.

``submit``/``cancel``/``call`` run on the event loop and only append under the
condition's lock; ``_admit``/``_insert`` run on the MLX thread and move queued
requests into their model's ``BatchGenerator`` while slots are free.

Load shedding: ``submit`` forecasts (:mod:`forecast`) when a new request would get
its first token and refuses it at once with ``RESOURCE_EXHAUSTED`` /
``QUEUE_WAIT_TOO_LONG`` + ``RetryInfo`` when that is past the caller's deadline;
``_shed`` (MLX thread, every loop turn) does the same for requests already queued
whose forecast has slipped past their deadline, so no request waits out its deadline
in the queue only to be dropped there.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import TypeVar

from llmesh.kernel.errors import (
    FieldViolation,
    InvalidArgument,
    LlmeshError,
    ResourceExhausted,
    Unavailable,
)
from llmesh.kernel.logging import get_logger
from llmesh_inference.engine_core import EngineCore
from llmesh_inference.events import (
    ActiveRequest,
    Command,
    EngineStats,
    Failed,
    GenerationRequest,
    RequestHandle,
)
from llmesh_inference.forecast import first_token_s, slot_heap, take_slot
from llmesh_inference.models import LoadedModel
from llmesh_inference.sampling import make_sampler
from llmesh_inference.textstream import TextStream

log = get_logger("llmesh_inference.scheduler")

T = TypeVar("T")


class Admission(EngineCore):
    """Queueing on the asyncio side; admission into a batch on the MLX thread."""

    # ----- asyncio side ---------------------------------------------------------------

    def submit(self, req: GenerationRequest) -> RequestHandle:
        """Queue a request; raises ``ResourceExhausted`` when the queue is full."""
        loop = asyncio.get_running_loop()
        active = ActiveRequest(req=req, loop=loop, queue=asyncio.Queue(), outbox=self._outbox)
        active.timestamps["admitted"] = active.admitted_at
        with self._cond:
            if self.failure:
                raise self.failed_error()
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
            if req.deadline is not None:
                left = req.deadline - time.monotonic()
                late = self._late(self._start_step_locked(), req.options.max_tokens, left)
                if late is not None:
                    self.requests_shed_total += 1
                    self.metrics.finished("shed")
                    raise self._too_slow(*late, left)
            self._pending.append(active)
            self.metrics.queue_depth(len(self._pending))
            self._cond.notify_all()
        return RequestHandle(self, active)

    def _slot_heap_locked(self) -> list[float]:
        """When (in decode steps from now) each batch slot is expected to be free."""
        return slot_heap(
            self.max_batch_size,
            [
                self.pace.steps_left(a.max_tokens, a.completion_tokens)
                for a in self._running.values()
            ],
        )

    def _start_step_locked(self) -> float:
        """The decode step (from now) at which a request joining the back of the queue
        is expected to take a batch slot."""
        heap = self._slot_heap_locked()
        for queued in self._pending:
            take_slot(heap, self.pace.expected_tokens(queued.req.options.max_tokens))
        return heap[0]

    def _late(
        self, start_step: float, max_tokens: int, left_s: float
    ) -> tuple[float, float] | None:
        """(first token, end) forecast in seconds when the request cannot afford them,
        else None (also while the pace is not measured yet).

        Its first token must come before its deadline; and a request that has to wait
        for a slot must also be expected to finish by then, or it would hold a slot
        only to be cut by its deadline mid-stream (one that can start now is admitted:
        the caller may want what comes before its deadline). Each forecast gets a
        margin for its error: 10% and two steps.
        """
        step = self.pace.step_s
        first = first_token_s(start_step, step)
        end = (start_step + self.pace.expected_tokens(max_tokens)) * step

        def misses(at: float) -> bool:
            return at * 1.1 + 2 * step > left_s

        if step > 0 and (misses(first) or (start_step > 0 and misses(end))):
            return first, end
        return None

    def _too_slow(self, first_s: float, end_s: float, left_s: float) -> ResourceExhausted:
        left_s = max(0.0, left_s)
        return ResourceExhausted(
            f"this worker cannot serve the request before its deadline ({left_s:.2f}s "
            f"left): its queue forecast is the first token in ~{first_s:.2f}s, the end "
            f"in ~{end_s:.2f}s; retry on another worker, after the delay, or with a "
            "longer deadline",
            reason="QUEUE_WAIT_TOO_LONG",
            retry_after_s=round(max(0.1, min(30.0, end_s - left_s)), 2),
            metadata={
                "expected_wait_ms": str(int(first_s * 1000)),
                "expected_end_ms": str(int(end_s * 1000)),
                "remaining_ms": str(int(left_s * 1000)),
                "queued_requests": str(len(self._pending)),
            },
        )

    def cancel(self, active: ActiveRequest) -> None:
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
            if self.failure:
                raise self.failed_error()
            if self._stopping:
                raise Unavailable("worker is shutting down", retry_after_s=1.0)
            self._commands.append(Command(fn, loop, future))
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

    # ----- MLX thread -------------------------------------------------------------------

    def _shed(self) -> None:
        """Refuse queued requests that can no longer get a token before their deadline.

        The queue is replayed in order against the slots; a request whose forecast
        first token is past its deadline leaves the queue (its place goes to those
        behind it) with ``QUEUE_WAIT_TOO_LONG``, so the caller (the gateway) can still
        try another worker instead of waiting out the deadline here.
        """
        with self._cond:
            step_s = self.pace.step_s
            if step_s <= 0 or not self._pending:
                return
            now = time.monotonic()
            heap = self._slot_heap_locked()
            keep: list[ActiveRequest] = []
            shed: list[tuple[ActiveRequest, tuple[float, float], float]] = []
            for queued in self._pending:
                deadline = queued.req.deadline
                if deadline is not None and not queued.cancelled:
                    left = deadline - now
                    late = self._late(heap[0], queued.req.options.max_tokens, left)
                    if late is not None:
                        shed.append((queued, late, left))
                        continue
                take_slot(heap, self.pace.expected_tokens(queued.req.options.max_tokens))
                keep.append(queued)
            if not shed:
                return
            self._pending = collections.deque(keep)
            for queued, _wait, _left in shed:
                queued.done = True
                queued.timestamps["finished"] = now
                self.requests_shed_total += 1
                self.metrics.finished("shed")
            self.metrics.queue_depth(len(self._pending))
        for queued, late, left in shed:
            queued.emit(Failed(self._too_slow(*late, left)))
        log.info("shed %d queued requests that could not start before their deadline", len(shed))

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

    def _insert(self, active: ActiveRequest) -> None:
        req = active.req
        model = self._model_for(req.model)
        model.requests += 1
        active.model = model
        tokens = self._tokenize(model, req)
        active.prompt_tokens = len(tokens)
        room = model.context_length - len(tokens)
        if room < 1:
            field_name = "input.prompt" if req.prompt is not None else "input.messages"
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
