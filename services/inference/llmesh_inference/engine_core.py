"""The state the scheduler's parts share: queues, running requests, counters.

The asyncio side (:mod:`admission`) and the MLX thread (:mod:`mlx_loop`,
:mod:`lifecycle`) meet here, under one ``threading.Condition``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from llmesh.kernel.errors import Unavailable
from llmesh.kernel.health import HealthReporter
from llmesh.kernel.tasks import SupervisedThread
from llmesh_inference.events import ActiveRequest, Command, Event, Finished
from llmesh_inference.forecast import ServiceRate
from llmesh_inference.metrics import InferenceMetrics
from llmesh_inference.models import LoadedModel, ModelStore


class EngineCore:
    """Shared state of the engine; the parts are mixed into :class:`Engine`."""

    def __init__(
        self,
        store: ModelStore,
        *,
        max_batch_size: int,
        queue_capacity: int,
        idle_unload_s: float = 0.0,
        pinned: Callable[[], set[str]] = set,
        metrics: InferenceMetrics | None = None,
        health: HealthReporter | None = None,
        decode_delay_s: float = 0.0,
    ) -> None:
        self.store = store
        # A pause after every decode step (0: none): slow hardware on demand, for drills
        # and for tests that need a generation to outlast a deadline on any machine.
        self.decode_delay_s = decode_delay_s
        self.max_batch_size = max_batch_size
        self.queue_capacity = queue_capacity
        self.idle_unload_s = idle_unload_s
        self._pinned = pinned
        self.metrics = metrics or InferenceMetrics()
        self._cond = threading.Condition()
        self._pending: collections.deque[ActiveRequest] = collections.deque()
        self._commands: collections.deque[Command] = collections.deque()
        self._running: dict[tuple[str, int], ActiveRequest] = {}
        self._cancel_flag = False
        self._stopping = False
        self._health = health
        self._thread: SupervisedThread | None = None
        self.failure: str = ""
        """Why the MLX thread died ("" while it runs); new work is refused at once."""
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
        # The pace the queue-wait forecast of admission uses (see forecast.py).
        self.pace = ServiceRate()
        self.requests_shed_total = 0
        self._next_idle_check = 0.0
        self._outbox: list[tuple[ActiveRequest, Event]] = []

    def failed_error(self) -> Unavailable:
        """The error for work the dead MLX thread cannot do (retry on another worker)."""
        return Unavailable(
            f"the inference engine stopped after an internal error ({self.failure}); "
            "retry on another worker",
            retry_after_s=1.0,
        )

    def _has_work_locked(self) -> bool:
        return bool(
            self._stopping or self._commands or self._pending or self._running or self._cancel_flag
        )

    def _tokens_per_second_locked(self, window: float = 5.0) -> float:
        now = time.monotonic()
        while self._rate and self._rate[0][0] < now - window:
            self._rate.popleft()
        if not self._rate:
            return 0.0
        span = max(now - self._rate[0][0], 1.0)
        return sum(n for _, n in self._rate) / span

    def _finish(
        self,
        active: ActiveRequest,
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
        self.pace.observe_finished(
            active.completion_tokens, active.max_tokens or active.req.options.max_tokens
        )
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

    # ----- provided by the parts --------------------------------------------------

    def _admit(self) -> None:
        raise NotImplementedError

    def _shed(self) -> None:
        raise NotImplementedError

    def _model_for(self, name: str) -> LoadedModel:
        raise NotImplementedError

    def _unload_idle(self) -> None:
        raise NotImplementedError
