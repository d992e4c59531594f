"""Generation through the llama-server child, behind the same interface as the MLX engine.

``submit`` queues a request (bounded: ``max_batch_size`` running, ``queue_capacity``
waiting, else RESOURCE_EXHAUSTED + RetryInfo) and runs it as one asyncio task: wait
for a slot, POST ``/completion`` with ``stream: true``, turn each server-sent event
into a :class:`Chunk` and the last into :class:`Finished`. llama-server batches the
running requests continuously over its slots. A client cancel or a passed deadline
cancels the task, which closes the connection: llama-server aborts that slot at once.
Embeddings and model commands run on the MLX thread (``call``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from llmesh.kernel.errors import (
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    LlmeshError,
    ResourceExhausted,
    Unavailable,
)
from llmesh.kernel.logging import get_logger
from llmesh_inference.events import (
    CONTEXT_FULL,
    EOS,
    LENGTH,
    STOP,
    ActiveRequest,
    Chunk,
    EngineStats,
    Failed,
    Finished,
    GenerationRequest,
    RequestHandle,
)
from llmesh_inference.llamacpp.child import LlamaServerChild
from llmesh_inference.llamacpp.http import (
    HttpError,
    open_request,
    request_json,
    server_sent_events,
)
from llmesh_inference.metrics import InferenceMetrics
from llmesh_inference.sampling import SamplingOptions

log = get_logger(__name__)
T = TypeVar("T")

_STOP_TYPES = {"eos": EOS, "word": STOP, "limit": LENGTH, "none": LENGTH}


class CommandRunner(Protocol):
    """What runs ``call`` commands (the MLX engine's thread, for embeddings)."""

    async def call(self, fn: Callable[[], T]) -> T: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


def completion_payload(
    prompt: str, options: SamplingOptions, *, max_tokens: int, cache_prompt: bool
) -> dict[str, Any]:
    """``/completion`` body: our sampling semantics (no min-p, no penalties) in llama.cpp."""
    payload: dict[str, Any] = {
        "prompt": prompt,
        "n_predict": max_tokens,
        "stream": True,
        "return_tokens": True,
        "cache_prompt": cache_prompt,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        "min_p": 0.0,
        "stop": list(options.stop),
    }
    if options.seed is not None:
        payload["seed"] = options.seed
    return payload


def finish_reason(stop_type: str, *, context_full: bool) -> str:
    """Our finish reason for llama-server's ``stop_type``."""
    reason = _STOP_TYPES.get(stop_type, LENGTH)
    return CONTEXT_FULL if reason == LENGTH and context_full else reason


def http_error(exc: HttpError, field_name: str) -> LlmeshError:
    """llama-server's error answer as our error (bad input is never INTERNAL)."""
    body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else {}
    message = body.get("message", str(exc.body)) if isinstance(body, dict) else str(exc.body)
    kind = body.get("type", "") if isinstance(body, dict) else ""
    if kind == "exceed_context_size_error":
        n_prompt, n_ctx = body.get("n_prompt_tokens", 0), body.get("n_ctx", 0)
        return InvalidArgument(
            f"prompt has {n_prompt} tokens; the model's context holds {n_ctx} "
            "(prompt + at least one generated token)",
            reason="PROMPT_TOO_LONG",
            field_violations=[FieldViolation(field_name, f"at most {n_ctx - 1} tokens fit")],
            metadata={"prompt_tokens": str(n_prompt)},
        )
    if exc.status == 400:
        return InvalidArgument(f"llama-server refused the request: {message}")
    return Unavailable(f"llama-server answered {exc.status}: {message}", retry_after_s=1.0)


class LlamaCppEngine:
    """Requests to the llama-server child; counters and ``Stats`` like the MLX engine."""

    name = "llama.cpp"

    def __init__(
        self,
        child: LlamaServerChild,
        commands: CommandRunner,
        *,
        model: str,
        max_batch_size: int,
        queue_capacity: int,
        context_length: int,
        cache_prompt: bool = True,
        metrics: InferenceMetrics | None = None,
    ) -> None:
        self.child = child
        self._commands = commands
        self.model = model
        self.max_batch_size = max_batch_size
        self.queue_capacity = queue_capacity
        self.context_length = context_length
        self.cache_prompt = cache_prompt
        self.metrics = metrics or InferenceMetrics()
        self._slots = asyncio.Semaphore(max_batch_size)
        self._pending: dict[str, ActiveRequest] = {}
        self._running: dict[str, ActiveRequest] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = time.monotonic()
        self._rate: collections.deque[tuple[float, int]] = collections.deque()
        self.last_progress = time.monotonic()
        self.failure = ""
        self.tokens_generated_total = 0
        self.requests_completed_total = 0
        self.requests_cancelled_total = 0

    # ----- what the worker and servicer use ---------------------------------------------

    @property
    def busy(self) -> bool:
        """Requests are running (the stall watchdog's condition)."""
        return bool(self._running)

    def start(self) -> None:
        self._commands.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._commands.stop(timeout)

    async def call(self, fn: Callable[[], T]) -> T:
        return await self._commands.call(fn)

    def has_work(self) -> bool:
        return bool(self._pending or self._running)

    def submit(self, req: GenerationRequest) -> RequestHandle:
        """Queue ``req``; raises ``ResourceExhausted`` when running and waiting are full."""
        if not self.child.ready:
            raise Unavailable(
                "llama-server is not ready (starting or restarting); retry shortly",
                retry_after_s=1.0,
            )
        free = max(0, self.max_batch_size - len(self._running))
        if len(self._pending) >= self.queue_capacity + free:
            rate = self._tokens_per_second()
            retry = max(0.5, min(30.0, (len(self._pending) + 1) * 32 / max(rate, 1.0)))
            raise ResourceExhausted(
                f"inference queue is full ({self.queue_capacity} waiting)",
                reason="QUEUE_FULL",
                retry_after_s=round(retry, 2),
                metadata={"queue_capacity": str(self.queue_capacity)},
            )
        loop = asyncio.get_running_loop()
        active = ActiveRequest(req=req, loop=loop, queue=asyncio.Queue())
        active.timestamps["admitted"] = active.admitted_at
        self._pending[req.request_id] = active
        self.metrics.queue_depth(len(self._pending))
        self._tasks[req.request_id] = loop.create_task(
            self._run(active), name=f"llamacpp-{req.request_id}"
        )
        return RequestHandle(self, active)

    def cancel(self, active: ActiveRequest) -> None:
        """The client went away: stop the task (its connection closes; the slot is freed)."""
        if active.done or active.cancelled:
            return
        active.cancelled = True
        task = self._tasks.get(active.req.request_id)
        if task is not None:
            task.cancel()

    def stats(self) -> EngineStats:
        requests = [
            (a.req.request_id, a.req.model, a.completion_tokens, False)
            for a in self._running.values()
        ] + [(a.req.request_id, a.req.model, 0, True) for a in self._pending.values()]
        return EngineStats(
            active_requests=len(self._running),
            queued_requests=len(self._pending),
            batch_size=len(self._running),
            max_batch_size=self.max_batch_size,
            queue_capacity=self.queue_capacity,
            tokens_per_second=self._tokens_per_second(),
            tokens_generated_total=self.tokens_generated_total,
            decode_steps_total=0,  # llama-server's steps are not observed from outside
            requests_completed_total=self.requests_completed_total,
            requests_cancelled_total=self.requests_cancelled_total,
            requests=requests,
            uptime_seconds=time.monotonic() - self._started,
        )

    # ----- one request ------------------------------------------------------------------

    def _tokens_per_second(self, window: float = 5.0) -> float:
        now = time.monotonic()
        while self._rate and self._rate[0][0] < now - window:
            self._rate.popleft()
        if not self._rate:
            return 0.0
        return sum(n for _, n in self._rate) / max(now - self._rate[0][0], 1.0)

    async def _run(self, active: ActiveRequest) -> None:
        rid = active.req.request_id
        deadline = active.req.deadline
        try:
            async with asyncio.timeout_at(deadline):  # the loop's clock is monotonic
                async with self._slots:
                    self._pending.pop(rid, None)
                    now = time.monotonic()
                    if not self._running:
                        # Idle until now: the stall window starts here, not at the last
                        # token of the previous request (else the first request after an
                        # idle spell reads as a stall and liveness fails at once).
                        self.last_progress = now
                    self._running[rid] = active
                    active.inserted_at = now
                    active.timestamps["inserted"] = now
                    self.metrics.queue_wait(now - active.admitted_at)
                    await self._generate(active)
        except asyncio.CancelledError:
            self._end(active, cancelled=True)
            if not active.cancelled:
                raise  # the engine is stopping, not a client cancel
        except TimeoutError:
            self._end(active, cancelled=True)
            active.emit(
                Failed(
                    DeadlineExceeded(
                        f"deadline passed after {active.completion_tokens} tokens",
                        metadata={"tokens_delivered": str(active.completion_tokens)},
                    )
                )
            )
        except LlmeshError as exc:
            self._end(active, cancelled=False)
            active.emit(Failed(exc))
        except (OSError, ConnectionError, asyncio.IncompleteReadError, HttpError) as exc:
            self._end(active, cancelled=False)
            log.warning("request %s to llama-server failed: %s", rid, exc)
            active.emit(
                Failed(Unavailable(f"llama-server failed the request: {exc}", retry_after_s=1.0))
            )
        finally:
            self._tasks.pop(rid, None)

    def _end(self, active: ActiveRequest, *, cancelled: bool) -> None:
        rid = active.req.request_id
        self._pending.pop(rid, None)
        self._running.pop(rid, None)
        if active.done:
            return
        active.done = True
        active.timestamps["finished"] = time.monotonic()
        if cancelled:
            self.requests_cancelled_total += 1
            self.metrics.finished("cancelled")
        self.metrics.queue_depth(len(self._pending))

    async def _prompt(self, req: GenerationRequest) -> str:
        if req.messages is None:
            assert req.prompt is not None
            return req.prompt
        host, port = self.child.address
        try:
            answer = await request_json(
                host, port, "POST", "/apply-template", {"messages": req.messages}
            )
        except HttpError as exc:
            raise http_error(exc, "input.messages") from None
        return str(answer["prompt"])

    async def _generate(self, active: ActiveRequest) -> None:
        req = active.req
        field_name = "input.prompt" if req.prompt is not None else "input.messages"
        payload = completion_payload(
            await self._prompt(req),
            req.options,
            max_tokens=req.options.max_tokens,
            cache_prompt=self.cache_prompt,
        )
        host, port = self.child.address
        response = await open_request(host, port, "POST", "/completion", payload)
        try:
            if response.status != 200:
                raise http_error(
                    HttpError(response.status, _json(await response.body())), field_name
                )
            async for event in server_sent_events(response):
                if self._on_event(active, event):
                    return
            raise ConnectionError("llama-server closed the stream before its last event")
        finally:
            await response.close()  # on a cancel this is the abort llama-server sees

    def _on_event(self, active: ActiveRequest, event: dict[str, Any]) -> bool:
        """Deliver one server-sent event; True after the last one."""
        now = time.monotonic()
        self.last_progress = now
        text = str(event.get("content", ""))
        ids = [int(t) for t in event.get("tokens") or []]
        active.prompt_tokens = int(event.get("tokens_evaluated") or active.prompt_tokens)
        if ids:
            if not active.first_token_at:
                active.first_token_at = now
                active.timestamps["first_token"] = now
                self.metrics.first_token(now - active.admitted_at)
            else:
                self.metrics.inter_token(now - active.last_token_at)
            active.last_token_at = now
            active.completion_tokens += len(ids)
            self.tokens_generated_total += len(ids)
            self._rate.append((now, len(ids)))
            self.metrics.step(len(ids), 0.0)
        if not event.get("stop"):
            if text or ids:
                active.emit(Chunk(text, ids))
            return False
        completion = int(event.get("tokens_predicted") or active.completion_tokens)
        context_full = active.prompt_tokens + completion >= self.context_length
        reason = finish_reason(str(event.get("stop_type", "none")), context_full=context_full)
        self._end(active, cancelled=False)
        self.requests_completed_total += 1
        self.metrics.finished(reason)
        first = active.first_token_at or now
        inserted = active.inserted_at or now
        active.emit(
            Finished(
                reason=reason,
                text=text,
                token_ids=ids,
                prompt_tokens=active.prompt_tokens,
                completion_tokens=completion,
                ttft_ms=(first - active.admitted_at) * 1000,
                total_ms=(now - active.admitted_at) * 1000,
                queue_ms=(inserted - active.admitted_at) * 1000,
            )
        )
        return True


def _json(raw: bytes) -> Any:
    import json

    with contextlib.suppress(ValueError):
        return json.loads(raw)
    return raw.decode("utf-8", "replace")
