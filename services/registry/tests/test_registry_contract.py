"""One contract suite, run against every registry backend (in-memory and real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from llmesh.kernel.errors import FailedPrecondition, NotFound
from llmesh.testing.polling import await_until
from llmesh.testing.servers import RedisServer
from llmesh.v1 import common_pb2
from llmesh_registry.backend import RegistryBackend
from llmesh_registry.memory_backend import MemoryBackend
from llmesh_registry.model import (
    DRAINING,
    READY,
    REMOVED,
    UNHEALTHY,
    UPSERTED,
    Event,
    HeartbeatUpdate,
    Keepalive,
    LeasePolicy,
    Snapshot,
    Update,
    WorkerFilter,
)
from llmesh_registry.redis_backend import RedisBackend
from llmesh_registry.sweeper import sweep_forever

FAST = LeasePolicy(ttl_ms=400, evict_after_ms=400)
SLOW = LeasePolicy(ttl_ms=60_000, evict_after_ms=60_000)


def worker(worker_id: str = "w1", *, model: str = "tiny", zone: str = "a") -> common_pb2.WorkerInfo:
    return common_pb2.WorkerInfo(
        worker_id=worker_id,
        address="127.0.0.1:50054",
        labels=common_pb2.Labels(entries={"zone": zone}),
        models_loaded=[model],
        models_available=[model, "other"],
        capacity=8,
        state=READY,
        models=[
            common_pb2.ModelInfo(name=model, context_length=2048, parameters=7, dtype="float32"),
            common_pb2.ModelInfo(name="minilm", context_length=256, embedding=True),
        ],
    )


def load(active: int) -> common_pb2.WorkerLoad:
    return common_pb2.WorkerLoad(active_requests=active, free_slots=8 - active)


@contextlib.asynccontextmanager
async def running(backend: RegistryBackend) -> AsyncIterator[RegistryBackend]:
    await backend.start()
    sweeper = asyncio.create_task(sweep_forever(backend, interval_s=0.025))
    try:
        yield backend
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await backend.close()


class BackendFactory:
    """Builds backends of one kind; Redis ones share a per-test key prefix."""

    def __init__(self, kind: str, redis: RedisServer | None) -> None:
        self.kind = kind
        self.redis = redis
        self.prefix = "{t-" + uuid.uuid4().hex[:10] + "}"

    def make(self, policy: LeasePolicy, *, history: int = 10_000) -> RegistryBackend:
        if self.kind == "redis":
            assert self.redis is not None
            return RedisBackend(policy, url=self.redis.url, prefix=self.prefix, history=history)
        return MemoryBackend(policy, history=history)


@pytest.fixture(params=["memory", "redis"])
def factory(request: pytest.FixtureRequest) -> BackendFactory:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    return BackendFactory(request.param, redis)


class Watcher:
    """Consumes a backend's watch stream into a local view, like the gateway does."""

    def __init__(self, backend: RegistryBackend, since: int = 0) -> None:
        self.updates: list[Update] = []
        self.view: dict[str, common_pb2.WorkerInfo] = {}
        self.revision = 0
        self._task = asyncio.create_task(self._run(backend, since))

    async def _run(self, backend: RegistryBackend, since: int) -> None:
        async for update in backend.watch(since):
            self.updates.append(update)
            self.revision = update.revision
            if isinstance(update, Snapshot):
                self.view = {w.worker_id: w for w in update.workers}
            elif isinstance(update, Keepalive):
                continue
            elif update.type == REMOVED:
                self.view.pop(update.worker.worker_id, None)
            else:
                self.view[update.worker.worker_id] = update.worker

    def events(self) -> list[Event]:
        return [u for u in self.updates if isinstance(u, Event)]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_register_appears_ready_in_list_and_watch(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        watcher = Watcher(backend)
        await await_until(lambda: _true(bool(watcher.updates)), what="initial snapshot")
        first = watcher.updates[0]
        assert isinstance(first, Snapshot) and first.workers == []

        lease = await backend.register(worker("w1"), "lease-1")
        assert lease.ttl_ms == SLOW.ttl_ms and lease.revision == first.revision + 1

        snap = await backend.snapshot()
        assert [w.worker_id for w in snap.workers] == ["w1"]
        assert snap.workers[0].state == READY
        assert snap.workers[0].HasField("lease_expires_at")
        assert snap.revision == lease.revision

        await await_until(lambda: _true("w1" in watcher.view), what="watcher sees w1")
        event = watcher.events()[0]
        assert event.type == UPSERTED and event.revision == lease.revision
        assert watcher.view["w1"].state == READY
        assert list(watcher.view["w1"].models_loaded) == ["tiny"]
        # The model figures sent with Register are kept (for the gateway's ListModels).
        for seen in (snap.workers[0], watcher.view["w1"]):
            assert list(seen.models) == list(worker("w1").models)
        await watcher.stop()


async def test_registration_is_idempotent_per_worker_id(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        await backend.register(worker("w1", zone="a"), "lease-1")
        before = (await backend.snapshot()).workers[0]
        await backend.register(worker("w1", zone="b"), "lease-2")
        snap = await backend.snapshot()
        assert len(snap.workers) == 1
        assert snap.workers[0].labels.entries["zone"] == "b"
        assert snap.workers[0].registered_at == before.registered_at
        with pytest.raises(FailedPrecondition):
            await backend.heartbeat(HeartbeatUpdate("w1", "lease-1"))
        result = await backend.heartbeat(HeartbeatUpdate("w1", "lease-2"))
        assert result.state == READY


async def test_heartbeat_updates_load_and_emits_only_on_change(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        lease = await backend.register(worker("w1"), "L")
        watcher = Watcher(backend, since=lease.revision)
        r1 = await backend.heartbeat(HeartbeatUpdate("w1", "L", load=load(3)))
        assert r1.revision == lease.revision + 1 and r1.ttl_ms == SLOW.ttl_ms
        r2 = await backend.heartbeat(HeartbeatUpdate("w1", "L", load=load(3)))
        assert r2.revision == r1.revision  # nothing changed: no event
        r3 = await backend.heartbeat(
            HeartbeatUpdate("w1", "L", models_loaded=("tiny", "big"), state=READY)
        )
        assert r3.revision == r1.revision + 1
        snap = await backend.snapshot()
        assert snap.workers[0].load.active_requests == 3
        assert list(snap.workers[0].models_loaded) == ["tiny", "big"]
        await await_until(lambda: _true(len(watcher.events()) == 2), what="two events")
        assert [e.revision for e in watcher.events()] == [r1.revision, r3.revision]
        assert watcher.view["w1"].load.active_requests == 3
        await watcher.stop()


async def test_unknown_worker_and_stale_lease(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        with pytest.raises(NotFound):
            await backend.heartbeat(HeartbeatUpdate("ghost", "L"))
        with pytest.raises(NotFound):
            await backend.deregister("ghost", "")
        with pytest.raises(NotFound):
            await backend.set_state("ghost", DRAINING, "x")
        await backend.register(worker("w1"), "L")
        with pytest.raises(FailedPrecondition):
            await backend.deregister("w1", "wrong")


async def test_missed_heartbeats_mark_unhealthy_then_evict(factory: BackendFactory) -> None:
    async with running(factory.make(FAST)) as backend:
        watcher = Watcher(backend)
        await await_until(lambda: _true(bool(watcher.updates)), what="initial snapshot")
        await backend.register(worker("w1"), "L")
        await backend.register(worker("w2"), "L2")

        async def state_of(worker_id: str) -> int | None:
            for w in (await backend.snapshot()).workers:
                if w.worker_id == worker_id:
                    return int(w.state)
            return None

        # w2 keeps heartbeating; w1 goes silent.
        async def keep_alive() -> None:
            while True:
                await backend.heartbeat(HeartbeatUpdate("w2", "L2", state=READY))
                await asyncio.sleep(0.05)

        alive = asyncio.create_task(keep_alive())
        try:
            await await_until(
                lambda: _is(state_of("w1"), UNHEALTHY), timeout_s=5, what="w1 UNHEALTHY"
            )
            listed = (await backend.snapshot()).workers
            assert listed[0].state_reason == "lease expired"
            await await_until(lambda: _is(state_of("w1"), None), timeout_s=5, what="w1 evicted")
            assert await state_of("w2") == READY
        finally:
            alive.cancel()
            await asyncio.gather(alive, return_exceptions=True)
        with pytest.raises(NotFound):
            await backend.heartbeat(HeartbeatUpdate("w1", "L"))
        await await_until(lambda: _true("w1" not in watcher.view), what="watcher drops w1")
        kinds = [(e.type, e.worker.state) for e in watcher.events() if e.worker.worker_id == "w1"]
        assert kinds == [(UPSERTED, READY), (UPSERTED, UNHEALTHY), (REMOVED, UNHEALTHY)]
        await watcher.stop()


async def test_heartbeat_after_lapse_revives_worker(factory: BackendFactory) -> None:
    policy = LeasePolicy(ttl_ms=300, evict_after_ms=60_000)
    async with running(factory.make(policy)) as backend:
        await backend.register(worker("w1"), "L")

        async def unhealthy() -> bool:
            return (await backend.snapshot()).workers[0].state == UNHEALTHY

        await await_until(unhealthy, timeout_s=5, what="lapse")
        result = await backend.heartbeat(HeartbeatUpdate("w1", "L", state=READY))
        assert result.state == READY
        assert (await backend.snapshot()).workers[0].state_reason == ""


async def test_deregister_removes_and_streams_removed(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        lease = await backend.register(worker("w1"), "L")
        watcher = Watcher(backend, since=lease.revision)
        revision = await backend.deregister("w1", "L")
        assert revision == lease.revision + 1
        assert (await backend.snapshot()).workers == []
        with pytest.raises(NotFound):
            await backend.deregister("w1", "")
        await await_until(lambda: _true(bool(watcher.events())), what="removed event")
        assert watcher.events()[0].type == REMOVED
        assert watcher.events()[0].worker.worker_id == "w1"
        await watcher.stop()


async def test_admin_drain_sticks_over_heartbeats(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        await backend.register(worker("w1"), "L")
        drained, _ = await backend.set_state("w1", DRAINING, "maintenance")
        assert drained.state == DRAINING and drained.state_reason == "maintenance"
        result = await backend.heartbeat(HeartbeatUpdate("w1", "L", state=READY))
        assert result.state == DRAINING
        await backend.set_state("w1", READY, "")
        result = await backend.heartbeat(HeartbeatUpdate("w1", "L", state=UNHEALTHY))
        assert result.state == UNHEALTHY


async def test_admin_drain_sticks_over_a_reregistration(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        await backend.register(worker("w1"), "L1")
        await backend.set_state("w1", DRAINING, "maintenance")
        # The worker registers again (its registrar restarted, asking READY): still drained.
        await backend.register(worker("w1"), "L2")
        listed = (await backend.snapshot()).workers[0]
        assert listed.state == DRAINING and listed.state_reason == "maintenance"
        result = await backend.heartbeat(HeartbeatUpdate("w1", "L2", state=READY))
        assert result.state == DRAINING
        # Removed, the drain goes with it.
        await backend.deregister("w1", "L2")
        await backend.register(worker("w1"), "L3")
        assert (await backend.snapshot()).workers[0].state == READY


async def test_list_filters(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        await backend.register(worker("w1", model="tiny", zone="a"), "L1")
        await backend.register(worker("w2", model="big", zone="b"), "L2")
        await backend.set_state("w2", DRAINING, "")
        workers = (await backend.snapshot()).workers

        def ids(f: WorkerFilter) -> list[str]:
            return [w.worker_id for w in workers if f.matches(w)]

        assert ids(WorkerFilter()) == ["w1", "w2"]
        assert ids(WorkerFilter(model="big")) == ["w2"]
        assert ids(WorkerFilter(model="other")) == ["w1", "w2"]  # available on both
        assert ids(WorkerFilter(state=READY)) == ["w1"]
        assert ids(WorkerFilter(labels={"zone": "b"})) == ["w2"]
        assert ids(WorkerFilter(model="tiny", labels={"zone": "b"})) == []


async def test_watch_resumes_from_revision(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW)) as backend:
        lease = await backend.register(worker("w1"), "L1")
        await backend.register(worker("w2"), "L2")
        await backend.heartbeat(HeartbeatUpdate("w1", "L1", load=load(5)))
        await backend.deregister("w2", "")
        # A client that saw revision `lease.revision` reconnects: it gets exactly
        # the three changes it missed, no snapshot, then live changes.
        watcher = Watcher(backend, since=lease.revision)
        await await_until(lambda: _true(len(watcher.updates) == 3), what="replay")
        assert all(isinstance(u, Event) for u in watcher.updates)
        revisions = [u.revision for u in watcher.updates]
        assert revisions == [lease.revision + 1, lease.revision + 2, lease.revision + 3]
        live = await backend.register(worker("w3"), "L3")
        await await_until(lambda: _true(watcher.revision == live.revision), what="live event")
        assert not any(isinstance(u, Snapshot) for u in watcher.updates)
        await watcher.stop()

        # Nothing missed: no snapshot, nothing replayed.
        current = Watcher(backend, since=live.revision)
        await backend.heartbeat(HeartbeatUpdate("w1", "L1", load=load(1)))
        await await_until(lambda: _true(bool(current.updates)), what="next event")
        assert isinstance(current.updates[0], Event)
        assert current.updates[0].revision == live.revision + 1
        await current.stop()

        # From the future (e.g. another registry's revisions): a snapshot.
        future = Watcher(backend, since=live.revision + 1_000)
        await await_until(lambda: _true(bool(future.updates)), what="snapshot")
        assert isinstance(future.updates[0], Snapshot)
        assert sorted(future.view) == ["w1", "w3"]
        await future.stop()


async def test_watch_gap_beyond_history_sends_snapshot(factory: BackendFactory) -> None:
    async with running(factory.make(SLOW, history=10)) as backend:
        first = await backend.register(worker("w0"), "L")
        # Redis trims its stream approximately (whole 100-entry nodes): go well past.
        for i in range(250):
            await backend.heartbeat(HeartbeatUpdate("w0", "L", load=load(i % 7 + 1)))
        watcher = Watcher(backend, since=first.revision)
        await await_until(lambda: _true(bool(watcher.updates)), what="snapshot")
        assert isinstance(watcher.updates[0], Snapshot)
        assert watcher.view["w0"].load.active_requests == 249 % 7 + 1
        await watcher.stop()


async def _true(value: bool) -> bool:
    return value


async def _is(value: object, expected: object) -> bool:
    return bool(await value == expected)  # type: ignore[misc]
