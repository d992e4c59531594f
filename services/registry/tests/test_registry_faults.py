"""The registry through its own faults (issue 19): a sweeper that finds the registry
stalled evicts nothing for one lease TTL; a restarted in-memory registry announces its
warm-up and ends it with a complete snapshot; quiet watches get keepalives; an admin's
drain outlives a re-registration and, carried by the registrar, a registry restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, inference_pb2, registry_pb2, registry_pb2_grpc
from llmesh_registry.memory_backend import MemoryBackend
from llmesh_registry.model import (
    DRAINING,
    READY,
    UNHEALTHY,
    HeartbeatUpdate,
    Keepalive,
    LeasePolicy,
    Snapshot,
    Update,
)
from llmesh_registry.probe import ProbeResult, WorkerProbe
from llmesh_registry.registrar import Registrar, WorkerIdentity
from llmesh_registry.settings import RegistrySettings
from llmesh_registry.sweeper import LeaseSweeper
from llmesh_registry.wiring import SERVICE_NAMES, wire

TTL_MS = 1000
EVICT_MS = 2000


class Clocks:
    """A wall clock (ms, for leases) and a monotonic one (s, for the sweeper)."""

    def __init__(self) -> None:
        self.wall_ms = 1_000_000
        self.mono_s = 100.0

    def advance(self, seconds: float) -> None:
        self.wall_ms += int(seconds * 1000)
        self.mono_s += seconds


def worker(worker_id: str) -> common_pb2.WorkerInfo:
    return common_pb2.WorkerInfo(
        worker_id=worker_id, address="127.0.0.1:1", models_loaded=["m"], state=READY
    )


def setup() -> tuple[Clocks, MemoryBackend, LeaseSweeper]:
    clocks = Clocks()
    backend = MemoryBackend(
        LeasePolicy(ttl_ms=TTL_MS, evict_after_ms=EVICT_MS), clock_ms=lambda: clocks.wall_ms
    )
    sweeper = LeaseSweeper(
        backend, interval_s=0.1, grace_s=TTL_MS / 1000, clock=lambda: clocks.mono_s
    )
    return clocks, backend, sweeper


async def keep_pace(clocks: Clocks, sweeper: LeaseSweeper, seconds: float) -> None:
    """Sweep every 0.1 s for ``seconds`` (a registry running normally)."""
    for _ in range(round(seconds / 0.1)):
        clocks.advance(0.1)
        await sweeper.tick()


async def states(backend: MemoryBackend) -> dict[str, int]:
    return {w.worker_id: w.state for w in (await backend.snapshot()).workers}


async def test_a_frozen_registry_evicts_nothing_when_it_wakes() -> None:
    clocks, backend, sweeper = setup()
    await backend.register(worker("a"), "La")
    await backend.register(worker("b"), "Lb")
    await sweeper.tick()
    # Frozen (SIGSTOP) for longer than lease + eviction delay: no heartbeat got in.
    clocks.advance((TTL_MS + EVICT_MS) / 1000 + 5)
    assert await sweeper.tick() == 0  # the stall is seen: nothing marked or evicted
    assert sweeper.stalls == 1
    assert await states(backend) == {"a": READY, "b": READY}
    # Within the grace (one TTL) a's registrar heartbeats; b's never does.
    await keep_pace(clocks, sweeper, 0.3)
    assert await states(backend) == {"a": READY, "b": READY}
    for _ in range(2):  # a third of the TTL apart, as registrars do
        await backend.heartbeat(HeartbeatUpdate("a", "La", state=READY))
        await keep_pace(clocks, sweeper, 0.4)
    # After the grace, leases are judged again: b lapsed long ago and goes; a lives.
    assert await states(backend) == {"a": READY}
    assert sweeper.stalls == 1


async def test_a_registry_that_keeps_pace_evicts_on_time() -> None:
    """The control: without a stall, a silent worker is marked, then evicted."""
    clocks, backend, sweeper = setup()
    await backend.register(worker("a"), "La")
    await keep_pace(clocks, sweeper, TTL_MS / 1000 + 0.1)
    assert await states(backend) == {"a": UNHEALTHY}
    await keep_pace(clocks, sweeper, EVICT_MS / 1000 + 0.1)
    assert await states(backend) == {}
    assert sweeper.stalls == 0


def test_a_stall_is_a_gap_well_short_of_a_lease() -> None:
    backend = MemoryBackend(LeasePolicy(ttl_ms=10_000))
    # Default interval (a tenth of the TTL, at most 1 s): five rounds.
    assert LeaseSweeper(backend, interval_s=1.0, grace_s=10.0).stall_after_s == 5.0
    # Short leases: half the grace, so no stall that could cost a lease goes unseen.
    assert LeaseSweeper(backend, interval_s=0.15, grace_s=1.5).stall_after_s == 0.75
    settings = RegistrySettings(lease_ttl_ms=4000)
    assert settings.effective_stall_grace_s == 4.0
    assert settings.effective_warmup_ms == 5000  # one TTL, at least 5 s
    assert RegistrySettings(backend="redis").effective_warmup_ms == 0  # state kept
    assert RegistrySettings(warmup_ms=0).effective_warmup_ms == 0


async def collect(updates: AsyncIterator[Update], into: list[Update]) -> None:
    async for update in updates:
        into.append(update)


async def test_a_fresh_memory_registry_warms_up_then_sends_a_complete_snapshot() -> None:
    backend = MemoryBackend(LeasePolicy(ttl_ms=TTL_MS), warmup_ms=300)
    await backend.start()
    seen: list[Update] = []
    task = asyncio.create_task(collect(backend.watch(), seen))
    try:
        await await_until(lambda: _true(bool(seen)), what="first snapshot")
        first = seen[0]
        assert isinstance(first, Snapshot) and first.warming and first.workers == []
        await backend.register(worker("a"), "La")

        async def complete() -> bool:
            return any(isinstance(u, Snapshot) and not u.warming for u in seen)

        await await_until(complete, timeout_s=10, what="the end of the warm-up")
        last = [u for u in seen if isinstance(u, Snapshot)][-1]
        assert [w.worker_id for w in last.workers] == ["a"]
        assert not (await backend.snapshot()).warming
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.close()


async def test_quiet_watches_get_keepalives_and_busy_ones_do_not_need_them() -> None:
    backend = MemoryBackend(LeasePolicy(ttl_ms=TTL_MS))
    seen: list[Update] = []
    task = asyncio.create_task(collect(backend.watch(keepalive_s=0.05), seen))
    try:

        async def keepalives() -> bool:
            return sum(isinstance(u, Keepalive) for u in seen) >= 3

        await await_until(keepalives, timeout_s=10, what="keepalives")
        snap = seen[0]
        assert isinstance(snap, Snapshot) and isinstance(seen[1], Keepalive)
        alive = next(u for u in seen if isinstance(u, Keepalive))
        assert alive.revision == snap.revision and alive.interval_s == 0.05
        # A change still arrives, in order, between keepalives.
        revision = (await backend.register(worker("a"), "La")).revision
        await await_until(
            lambda: _true(any(getattr(u, "revision", 0) == revision for u in seen)),
            what="the event",
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_servicer_sends_keepalives_with_their_interval() -> None:
    settings = RegistrySettings(port=0, watch_keepalive_ms=100, warmup_ms=0)
    async with (
        serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served,
        grpc.aio.insecure_channel(served.address) as channel,
    ):
        call = registry_pb2_grpc.RegistryServiceStub(channel).WatchWorkers(
            registry_pb2.WatchWorkersRequest()
        )
        first: Any = await call.read()
        second: Any = await call.read()  # announced at once
        third: Any = await call.read()  # after 100 ms of nothing
        call.cancel()
    assert first.HasField("snapshot") and not first.snapshot.warming
    for alive in (second, third):
        assert alive.HasField("keepalive") and alive.revision == first.revision
        assert alive.keepalive.interval.ToMilliseconds() == 100


async def test_an_admin_drain_outlives_a_reregistration() -> None:
    backend = MemoryBackend(LeasePolicy(ttl_ms=TTL_MS))
    await backend.register(worker("a"), "L1")
    await backend.set_state("a", DRAINING, "maintenance")
    # The same worker registers again (its registrar restarted): still drained.
    await backend.register(worker("a"), "L2")
    assert await states(backend) == {"a": DRAINING}
    result = await backend.heartbeat(HeartbeatUpdate("a", "L2", state=READY))
    assert result.state == DRAINING
    assert (await backend.snapshot()).workers[0].state_reason == "maintenance"
    # Removed, the pin goes with it: a new registration is READY.
    await backend.deregister("a", "L2")
    await backend.register(worker("a"), "L3")
    assert await states(backend) == {"a": READY}


# -- the registrar carries an admin's drain over a registry restart ----------------------


class HealthyProbe(WorkerProbe):
    """A worker that is always healthy and idle (no inference process needed)."""

    def __init__(self) -> None:
        self.timeout_s = 0.5

    async def probe(self) -> ProbeResult:
        stats = inference_pb2.StatsResponse(
            max_batch_size=4, loaded_models=[common_pb2.ModelInfo(name="m", loaded=True)]
        )
        return ProbeResult(healthy=True, stats=stats)

    async def models(self) -> list[common_pb2.ModelInfo]:
        return []


@contextlib.asynccontextmanager
async def registry_on(port: int) -> AsyncIterator[str]:
    settings = RegistrySettings(port=port, lease_ttl_ms=600, evict_after_ms=600_000, warmup_ms=0)
    async with serving(
        settings, SERVICE_NAMES, lambda host: wire(host, settings), grace_s=0.2
    ) as served:
        yield served.address


async def listed(address: str, worker_id: str) -> common_pb2.WorkerInfo | None:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await registry_pb2_grpc.RegistryServiceStub(channel).ListWorkers(
            registry_pb2.RegistryServiceListWorkersRequest(), timeout=5
        )
    return next((w for w in reply.workers if w.worker_id == worker_id), None)


async def registry_state(address: str, worker_id: str) -> int | None:
    found = await listed(address, worker_id)
    return None if found is None else int(found.state)


async def set_state(address: str, worker_id: str, state: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await registry_pb2_grpc.RegistryServiceStub(channel).SetWorkerState(
            registry_pb2.SetWorkerStateRequest(worker_id=worker_id, state=state, reason="ops"),  # type: ignore[arg-type]
            timeout=5,
        )


async def test_the_registrar_carries_an_admin_drain_over_a_registry_restart() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    stub: Any = registry_pb2_grpc.RegistryServiceStub(channel)
    registrar = Registrar(
        WorkerIdentity(worker_id="w", address="127.0.0.1:1", labels={}),
        HealthyProbe(),
        stub,
        registry_timeout_s=2.0,
        wait_interval_s=0.05,
    )
    task: asyncio.Task[None] | None = None

    async def state_is(want: int) -> bool:
        return await registry_state(address, "w") == want

    try:
        async with registry_on(port):
            task = asyncio.create_task(registrar.run())
            await await_until(lambda: state_is(READY), timeout_s=10, what="registered READY")
            await set_state(address, "w", DRAINING)
            await await_until(
                lambda: _true(registrar.admin_drained), timeout_s=10, what="the drain learnt"
            )
        # A fresh registry on the same address knows nothing of the drain.
        async with registry_on(port):
            await await_until(
                lambda: state_is(DRAINING), timeout_s=20, what="registered again DRAINING"
            )
            # Heartbeats later (a lease of 0.6 s: one every 0.2 s), still DRAINING.
            first = await listed(address, "w")
            assert first is not None
            since = first.last_heartbeat_at.ToMilliseconds()

            async def beats() -> common_pb2.WorkerInfo | None:
                now = await listed(address, "w")
                later = now is not None and now.last_heartbeat_at.ToMilliseconds() > since + 500
                return now if later else None

            after = await await_until(beats, timeout_s=10, what="heartbeats")
            assert after is not None and after.state == DRAINING
            # The admin undrains: READY, and the registrar forgets the drain.
            await set_state(address, "w", READY)
            await await_until(
                lambda: _true(not registrar.admin_drained), timeout_s=10, what="undrained"
            )
            assert await registry_state(address, "w") == READY
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await channel.close(None)


async def _true(value: bool) -> bool:
    return value
