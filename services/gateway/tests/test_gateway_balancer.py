"""Circuit breaker, retry budget and worker choice (P2C, affinity, NOT_FOUND vs UNAVAILABLE)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmesh.kernel.errors import NotFound, Unavailable
from llmesh.v1 import common_pb2, registry_pb2
from llmesh_gateway.balancer import Balancer, RetryBudget
from llmesh_gateway.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from llmesh_gateway.registry_cache import RegistryCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _worker(
    worker_id: str,
    *,
    state: common_pb2.WorkerState.ValueType = common_pb2.WORKER_STATE_READY,
    queued: int = 0,
    loaded: tuple[str, ...] = ("tiny",),
) -> common_pb2.WorkerInfo:
    return common_pb2.WorkerInfo(
        worker_id=worker_id,
        address=f"127.0.0.1:{abs(hash(worker_id)) % 1000 + 1000}",
        models_loaded=loaded,
        models_available=[*loaded, "big"],
        state=state,
        load=common_pb2.WorkerLoad(queued_requests=queued),
    )


def _cache(*workers: common_pb2.WorkerInfo) -> RegistryCache:
    cache = RegistryCache()
    cache.apply(
        registry_pb2.WatchWorkersResponse(
            revision=1, snapshot=registry_pb2.WorkerSnapshot(workers=workers)
        )
    )
    return cache


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=5, clock=clock)
    breaker.failure()
    assert breaker.current() == CLOSED
    breaker.failure()
    assert breaker.current() == OPEN and not breaker.available()
    clock.now += 5
    assert breaker.current() == HALF_OPEN
    assert breaker.acquire() is True
    assert breaker.acquire() is False  # one probe only
    breaker.failure()
    assert breaker.current() == OPEN
    clock.now += 5
    assert breaker.acquire()
    breaker.success()
    assert breaker.current() == CLOSED


def test_retry_budget_is_a_fraction_of_requests() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2)
    assert budget.withdraw() and budget.withdraw()
    assert not budget.withdraw()
    budget.deposit()
    budget.deposit()
    assert budget.withdraw()


def test_p2c_prefers_less_loaded_workers() -> None:
    cache = _cache(_worker("a", queued=0), _worker("b", queued=50), _worker("c", queued=50))
    balancer = Balancer(cache, rng=random.Random(1))
    picks = Counter(balancer.choose("tiny").worker_id for _ in range(300))
    # "a" wins every pair it is in (2/3 of pairs); never the most loaded when paired.
    assert picks["a"] == pytest.approx(200, abs=30)


def test_outstanding_requests_count_in_the_score() -> None:
    cache = _cache(_worker("a"), _worker("b"))
    balancer = Balancer(cache, rng=random.Random(2))
    for _ in range(5):
        balancer.started("a")
    assert {balancer.choose("tiny").worker_id for _ in range(20)} == {"b"}
    for _ in range(5):
        balancer.finished("a")


def test_session_affinity_is_stable_and_skips_excluded() -> None:
    cache = _cache(_worker("a"), _worker("b"), _worker("c"))
    balancer = Balancer(cache)
    first = balancer.choose("tiny", session_id="s1").worker_id
    assert all(balancer.choose("tiny", session_id="s1").worker_id == first for _ in range(10))
    other = balancer.choose("tiny", session_id="s1", exclude={first}).worker_id
    assert other != first


def test_not_found_vs_unavailable_and_breaker_exclusion() -> None:
    clock = Clock()
    cache = _cache(_worker("a"), _worker("d", state=common_pb2.WORKER_STATE_DRAINING))
    balancer = Balancer(cache, breaker_threshold=1, breaker_cooldown_s=10, clock=clock)
    with pytest.raises(NotFound):
        balancer.choose("nope")
    assert balancer.choose("big").worker_id == "a"  # available, not loaded
    balancer.breaker("a").failure()
    with pytest.raises(Unavailable) as info:
        balancer.choose("tiny")
    assert info.value.reason == "NO_READY_WORKER" and info.value.retry_after_s
    clock.now += 10
    assert balancer.choose("tiny").worker_id == "a"  # the half-open probe


def test_cache_applies_events() -> None:
    cache = _cache(_worker("a"))
    cache.apply(
        registry_pb2.WatchWorkersResponse(
            revision=2,
            event=registry_pb2.WorkerEvent(
                type=registry_pb2.WORKER_EVENT_TYPE_UPSERTED, worker=_worker("b")
            ),
        )
    )
    cache.apply(
        registry_pb2.WatchWorkersResponse(
            revision=3,
            event=registry_pb2.WorkerEvent(
                type=registry_pb2.WORKER_EVENT_TYPE_REMOVED, worker=_worker("a")
            ),
        )
    )
    assert [w.worker_id for w in cache.list()] == ["b"] and cache.revision == 3
    assert cache.routable()
