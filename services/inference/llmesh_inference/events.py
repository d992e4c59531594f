"""What flows between the asyncio side and the MLX thread: requests, events, handles.

The asyncio side owns :class:`RequestHandle`; the MLX thread writes events into
an :class:`ActiveRequest`'s outbox and they are delivered, one wake-up per loop
turn, with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmesh.kernel.errors import LlmeshError
from llmesh_inference.models import LoadedModel
from llmesh_inference.sampling import SamplingOptions
from llmesh_inference.textstream import TextStream

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
class ActiveRequest:
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

    outbox: list[tuple[ActiveRequest, Event]] | None = None

    def emit(self, event: Event) -> None:
        """Queue ``event`` for delivery at the end of the MLX thread's iteration."""
        if self.outbox is None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        else:
            self.outbox.append((self, event))


def deliver(items: list[tuple[ActiveRequest, Event]]) -> None:
    for active, event in items:
        active.queue.put_nowait(event)


class Canceller(Protocol):
    """What a handle needs from the engine."""

    def cancel(self, active: ActiveRequest) -> None: ...


class RequestHandle:
    """What the servicer holds for one request: its events and a way to cancel it."""

    def __init__(self, engine: Canceller, active: ActiveRequest) -> None:
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

    @property
    def tokens(self) -> int:
        """Tokens generated for this request so far."""
        return self._active.completion_tokens

    def cancel(self) -> None:
        self._engine.cancel(self._active)

    def interrupt(self, error: LlmeshError) -> None:
        """End the request with ``error`` now (on the event loop): the engine drops it,
        and the caller's next event is ``Failed(error)`` (the worker's drain, at the end
        of the grace period)."""
        self._engine.cancel(self._active)
        self._active.queue.put_nowait(Failed(error))


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
class Command:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
