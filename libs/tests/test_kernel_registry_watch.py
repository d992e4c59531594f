"""The registry cache through registry faults (issue 19): a warming snapshot from a
restarted registry does not blank the view; a registry that announced keepalives and
went quiet (hung) shows as stale though its stream is open."""

from __future__ import annotations

from llmesh.kernel.durations import duration
from llmesh.kernel.registry_watch import RegistryCache
from llmesh.v1 import common_pb2, registry_pb2

READY = common_pb2.WORKER_STATE_READY
DRAINING = common_pb2.WORKER_STATE_DRAINING


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def worker(worker_id: str, state: int = READY) -> common_pb2.WorkerInfo:
    return common_pb2.WorkerInfo(worker_id=worker_id, address="127.0.0.1:1", state=state)  # type: ignore[arg-type]


def snapshot(revision: int, *ids: str, warming: bool = False) -> registry_pb2.WatchWorkersResponse:
    return registry_pb2.WatchWorkersResponse(
        revision=revision,
        snapshot=registry_pb2.WorkerSnapshot(workers=[worker(i) for i in ids], warming=warming),
    )


def event(
    revision: int, info: common_pb2.WorkerInfo, *, removed: bool = False
) -> registry_pb2.WatchWorkersResponse:
    kind = (
        registry_pb2.WORKER_EVENT_TYPE_REMOVED
        if removed
        else registry_pb2.WORKER_EVENT_TYPE_UPSERTED
    )
    return registry_pb2.WatchWorkersResponse(
        revision=revision, event=registry_pb2.WorkerEvent(type=kind, worker=info)
    )


def keepalive(revision: int, interval_s: float) -> registry_pb2.WatchWorkersResponse:
    return registry_pb2.WatchWorkersResponse(
        revision=revision, keepalive=registry_pb2.WatchKeepalive(interval=duration(interval_s))
    )


def test_a_warming_snapshot_keeps_the_workers_it_lacks() -> None:
    cache = RegistryCache()
    cache.apply(snapshot(10, "a", "b"))
    # The registry restarted empty: a warming snapshot, nobody registered yet.
    cache.apply(snapshot(500, warming=True))
    assert set(cache.workers) == {"a", "b"} and cache.routable()
    assert cache.held == {"a", "b"} and cache.warming
    assert cache.resume_revision == 0  # a reconnect asks for a snapshot again
    # a registers again; b's registrar is drained meanwhile (an event wins over held).
    cache.apply(event(501, worker("a")))
    cache.apply(event(502, worker("b", DRAINING)))
    assert cache.held == set() and cache.workers["b"].state == DRAINING
    # A reconnect during the warm-up: still nothing dropped.
    cache.apply(snapshot(502, "a", warming=True))
    assert set(cache.workers) == {"a", "b"} and cache.held == {"b"}
    # Warm: the complete snapshot is the truth (b never came back).
    cache.apply(snapshot(503, "a"))
    assert set(cache.workers) == {"a"} and not cache.warming and not cache.held
    assert cache.resume_revision == 503


def test_a_removal_during_the_warm_up_is_applied() -> None:
    cache = RegistryCache()
    cache.apply(snapshot(10, "a", "b"))
    cache.apply(snapshot(500, warming=True))
    cache.apply(event(501, worker("b"), removed=True))
    assert set(cache.workers) == {"a"} and cache.held == {"a"}


def test_a_complete_snapshot_replaces_the_view() -> None:
    """Without warming (a registry that kept its state, or an older one): as before."""
    cache = RegistryCache()
    cache.apply(snapshot(10, "a", "b"))
    cache.apply(snapshot(11))
    assert cache.workers == {} and not cache.routable()


def test_a_hung_registry_shows_as_stale_though_its_stream_is_open() -> None:
    clock = Clock()
    cache = RegistryCache(clock=clock)
    cache.mark(connected=True)
    cache.apply(snapshot(10, "a"))
    cache.apply(keepalive(10, 1.0))
    clock.now += 2.5  # within three intervals: a quiet registry, not a hung one
    assert cache.staleness_s == 0
    clock.now += 1.0  # 3.5 s of silence after announcing keepalives every second
    assert cache.staleness_s == 3.5 and cache.silent_s == 3.5
    clock.now += 26.5
    assert cache.staleness_s == 30.0
    # It speaks again: live.
    cache.apply(keepalive(10, 1.0))
    assert cache.staleness_s == 0
    # A hung registry whose stream then breaks: stale since its last word, not the break.
    clock.now += 5.0
    cache.mark(connected=False)
    assert cache.staleness_s == 5.0
    clock.now += 1.0
    assert cache.staleness_s == 6.0


def test_without_keepalives_silence_is_not_staleness() -> None:
    """A registry that never announced keepalives (an older one) may be quiet for long."""
    clock = Clock()
    cache = RegistryCache(clock=clock)
    cache.mark(connected=True)
    cache.apply(snapshot(10, "a"))
    clock.now += 600
    assert cache.staleness_s == 0
    cache.mark(connected=False)  # a plain break: stale from now
    clock.now += 2
    assert cache.staleness_s == 2
