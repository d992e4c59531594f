"""Worker choice: READY workers with the model, breakers closed, power of two choices
on (gateway-side outstanding requests + reported queue depth), optional session affinity.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Observation

from llmesh.kernel.errors import NotFound, Unavailable
from llmesh.kernel.telemetry import meter
from llmesh.v1 import common_pb2
from llmesh_gateway.breaker import OPEN, CircuitBreaker
from llmesh_gateway.registry_cache import RegistryCache


@dataclass
class WorkerState:
    """The gateway's own view of one worker: in-flight calls and its breaker."""

    outstanding: int = 0
    breaker: CircuitBreaker | None = None


class RetryBudget:
    """Retries allowed as a fraction of first attempts (a token bucket of retries)."""

    def __init__(self, *, ratio: float = 0.2, reserve: float = 10.0) -> None:
        self._ratio = ratio
        self._reserve = reserve
        self._tokens = reserve

    def deposit(self) -> None:
        self._tokens = min(self._reserve, self._tokens + self._ratio)

    def withdraw(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Balancer:
    """Picks a worker for a model from the registry cache."""

    def __init__(
        self,
        cache: RegistryCache,
        *,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 5.0,
        affinity: bool = True,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self._threshold = breaker_threshold
        self._cooldown_s = breaker_cooldown_s
        self._affinity = affinity
        self._rng = rng or random.Random()
        self._clock = clock
        self._state: dict[str, WorkerState] = {}
        meter("llmesh.gateway").create_observable_gauge(
            "gateway.breakers_open",
            callbacks=[self._observe_open],
            description="Workers whose circuit breaker is open",
        )

    def _observe_open(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(
                sum(1 for s in self._state.values() if s.breaker and s.breaker.current() == OPEN)
            )
        ]

    def state(self, worker_id: str) -> WorkerState:
        found = self._state.get(worker_id)
        if found is None:
            found = WorkerState(
                breaker=CircuitBreaker(
                    threshold=self._threshold, cooldown_s=self._cooldown_s, clock=self._clock
                )
            )
            self._state[worker_id] = found
        return found

    def breaker(self, worker_id: str) -> CircuitBreaker:
        breaker = self.state(worker_id).breaker
        assert breaker is not None
        return breaker

    def candidates(self, model: str) -> list[common_pb2.WorkerInfo]:
        """READY workers with ``model`` loaded (else able to load it); any READY one for ''."""
        ready = [w for w in self.cache.list() if w.state == common_pb2.WORKER_STATE_READY]
        if not model:
            return ready
        loaded = [w for w in ready if model in w.models_loaded]
        return loaded or [w for w in ready if model in w.models_available]

    def _known(self, model: str) -> bool:
        return not model or any(
            model in w.models_loaded or model in w.models_available for w in self.cache.list()
        )

    def _score(self, worker: common_pb2.WorkerInfo) -> tuple[int, int]:
        outstanding = self.state(worker.worker_id).outstanding
        return (outstanding + worker.load.queued_requests, worker.load.active_requests)

    def choose(
        self, model: str, *, exclude: Collection[str] = (), session_id: str = ""
    ) -> common_pb2.WorkerInfo:
        """A worker for ``model``; claims its breaker's probe when half-open."""
        pool = [
            w
            for w in self.candidates(model)
            if w.worker_id not in exclude and self.breaker(w.worker_id).available()
        ]
        if not pool:
            if not self._known(model):
                raise NotFound(
                    f"no worker has model {model!r}",
                    reason="MODEL_NOT_FOUND",
                    metadata={"model": model},
                )
            raise Unavailable(
                f"no READY worker can serve model {model or '(default)'!r} now",
                reason="NO_READY_WORKER",
                metadata={"model": model},
                retry_after_s=1.0,
            )
        if self._affinity and session_id:
            chosen = max(pool, key=lambda w: _rendezvous(session_id, w.worker_id))
        elif len(pool) == 1:
            chosen = pool[0]
        else:
            first, second = self._rng.sample(pool, 2)
            chosen = first if self._score(first) <= self._score(second) else second
        self.breaker(chosen.worker_id).acquire()
        return chosen

    def started(self, worker_id: str) -> None:
        self.state(worker_id).outstanding += 1

    def finished(self, worker_id: str) -> None:
        state = self.state(worker_id)
        state.outstanding = max(0, state.outstanding - 1)


def _rendezvous(session_id: str, worker_id: str) -> int:
    digest = hashlib.blake2b(f"{session_id}\0{worker_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
