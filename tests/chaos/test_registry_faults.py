"""Chaos: the registry killed, restarted and frozen under load (issue 19, findings 1, 2, 5).

A real mesh: registry (in-memory backend), two tiny-model workers each with its registrar,
and the gateway, every one its own process. Steady Generate traffic runs through the
gateway while the registry is faulted; a monitor polls the gateway's view (admin
ListWorkers) and a direct watch on the registry records every event it emits.

- ``kill -9`` + restart: the gateway keeps routing from its last snapshot while the
  fresh registry warms up (no NO_READY_WORKER, the gateway never lists fewer than two
  READY). Leases of 15 s (a heartbeat every 5 s, as with the default 10 s TTL the
  registrars come back seconds after the gateway's watch does).
- SIGSTOP for longer than lease TTL + eviction delay (2 s + 3 s leases, so the freeze
  stays short), then SIGCONT: the registry's
  sweeper sees its own stall and evicts nothing; the gateway's staleness grows while
  the registry is frozen (its keepalives stop) and drops back to 0 after.
- An admin drain survives a registry restart: the registrar re-registers the worker
  DRAINING and it gets no traffic.

Every test first restores the baseline (registry running, both workers READY), so they
pass in any order.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmesh.testing.polling import wait_until
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, registry_pb2, registry_pb2_grpc
from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
from llmesh_cli.supervisor.plan import build_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "tiny-llama-test"
READY = common_pb2.WORKER_STATE_READY
DRAINING = common_pb2.WORKER_STATE_DRAINING
# Leases of the freeze test: short, so that a freeze of a few seconds outlives them.
SHORT = (2000, 3000)  # TTL, eviction delay (ms)
# Leases of the restart test: a heartbeat every 5 s. Its warm-up (one TTL by default) is
# raised to 20 s there: the registrars stay frozen until the gateway watches again,
# which on a loaded box can take most of a TTL.
LONG = (15000, 15000)
LONG_WARMUP_MS = 20000
CLIENTS = 4


@dataclass
class Chaos:
    mesh: LocalMesh
    gateway: str
    registry: str
    metrics_port: int
    admin_key: str
    user_key: str
    worker_ids: list[str]
    leases: tuple[int, int] = SHORT

    def staleness_metric(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("gateway_registry_staleness_seconds"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Chaos]:
    tmp = tmp_path_factory.mktemp("chaos-registry")
    options = mesh_options(
        tmp,
        models_dir=tiny_model_dir,
        default_model=MODEL,
        services=("registry", "inference", "registrar", "gateway"),
        workers=2,
        metrics=("gateway",),
        embeddings=False,
        args={
            "inference": ["--data-dir", str(tmp / "w0"), "--max-batch-size", "4"],
            "inference-1": ["--data-dir", str(tmp / "w1"), "--max-batch-size", "4"],
            "registrar": ["--probe-timeout-s", "1.0"],
            "registrar-1": ["--probe-timeout-s", "1.0"],
        },
        env={
            "registry": _lease_env(SHORT),
            "gateway": {
                "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "1000000",
                "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "1000000",
            },
        },
    )
    with LocalMesh(build_plan(options), home=tmp) as mesh:
        mesh.start(wait=False)
        for name in mesh.specs:
            mesh.wait_ready(name)
        state = Chaos(
            mesh=mesh,
            gateway=mesh.address("gateway"),
            registry=mesh.address("registry"),
            metrics_port=options.metrics_ports["gateway"] if options.metrics_ports else 0,
            admin_key=mesh.create_key(role="admin", tenant="ops"),
            user_key=mesh.create_key(role="user", tenant="acme"),
            worker_ids=[f"local-{mesh.port(n)}" for n in ("inference", "inference-1")],
        )
        yield state
        # Never leave a stopped process behind (its group would outlive the test).
        _resume(mesh)
        _registrars(mesh, signal.SIGCONT)


# -- the registry process --------------------------------------------------------------


def _signal(mesh: LocalMesh, sig: int) -> None:
    if mesh.running("registry"):
        os.killpg(mesh.pid("registry"), sig)


def _resume(mesh: LocalMesh) -> None:
    _signal(mesh, signal.SIGCONT)


def _registrars(mesh: LocalMesh, sig: int) -> None:
    for name in ("registrar", "registrar-1"):
        if mesh.running(name):
            os.killpg(mesh.pid(name), sig)


def _lease_env(leases: tuple[int, int]) -> dict[str, str]:
    return {
        "LLMESH_REGISTRY_LEASE_TTL_MS": str(leases[0]),
        "LLMESH_REGISTRY_EVICT_AFTER_MS": str(leases[1]),
        "LLMESH_REGISTRY_WARMUP_MS": str(LONG_WARMUP_MS if leases == LONG else 5000),
    }


def _restart_registry(c: Chaos, leases: tuple[int, int] | None = None) -> None:
    """``kill -9`` the registry and start it again (with ``leases`` if given)."""
    if leases is not None:
        c.mesh.specs["registry"].env.update(_lease_env(leases))
        c.leases = leases
    _resume(c.mesh)
    c.mesh.kill("registry")
    c.mesh.spawn("registry")
    c.mesh.wait_ready("registry", timeout_s=60)


# -- views of the mesh -------------------------------------------------------------------


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _gateway_view(c: Chaos) -> gateway_pb2.ListWorkersResponse:
    with grpc.insecure_channel(c.gateway) as channel:
        return gateway_pb2_grpc.AdminServiceStub(channel).ListWorkers(
            gateway_pb2.ListWorkersRequest(), metadata=_bearer(c.admin_key), timeout=5
        )


def _states(workers: object) -> dict[str, int]:
    return {w.worker_id: w.state for w in workers}  # type: ignore[attr-defined]


def _registry_states(c: Chaos) -> dict[str, int]:
    try:
        with grpc.insecure_channel(c.registry) as channel:
            reply = registry_pb2_grpc.RegistryServiceStub(channel).ListWorkers(
                registry_pb2.RegistryServiceListWorkersRequest(), timeout=5
            )
    except grpc.RpcError:
        return {}
    return _states(reply.workers)


def _set_state(c: Chaos, worker_id: str, state: int) -> None:
    with grpc.insecure_channel(c.registry) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).SetWorkerState(
            registry_pb2.SetWorkerStateRequest(worker_id=worker_id, state=state, reason="chaos"),  # type: ignore[arg-type]
            timeout=5,
        )


def _all_ready(c: Chaos) -> bool:
    """Both READY in the registry and in the gateway, whose watch is live."""
    want = dict.fromkeys(c.worker_ids, READY)
    try:
        view = _gateway_view(c)
        live = view.staleness_seconds == 0
        return live and _registry_states(c) == want and _states(view.workers) == want
    except grpc.RpcError:
        return False


def _baseline(c: Chaos, leases: tuple[int, int]) -> None:
    """Registry running with ``leases``, not frozen, nothing drained, both workers READY
    in the registry and the gateway."""
    _resume(c.mesh)
    _registrars(c.mesh, signal.SIGCONT)
    if c.leases != leases or not c.mesh.running("registry"):
        _restart_registry(c, leases)
    c.mesh.wait_ready("registry", timeout_s=60)
    for worker_id, state in _registry_states(c).items():
        if state == DRAINING:
            _set_state(c, worker_id, READY)
    wait_until(lambda: _all_ready(c), timeout_s=60, interval_s=0.2, what="both workers READY")


# -- load and observation ----------------------------------------------------------------


@dataclass
class Outcome:
    ok: int = 0
    by_worker: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def no_ready_worker(self) -> list[str]:
        return [f for f in self.failures if "NO_READY_WORKER" in f or "no READY worker" in f]


class Traffic:
    """``CLIENTS`` threads calling Generate back to back until stopped."""

    def __init__(self, c: Chaos) -> None:
        self._c = c
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcome = Outcome()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        request = gateway_pb2.GenerateRequest(
            input=common_pb2.GenerationInput(
                prompt="hi", sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0)
            )
        )
        with grpc.insecure_channel(self._c.gateway) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            while not self._stop.is_set():
                try:
                    reply = stub.Generate(request, metadata=_bearer(self._c.user_key), timeout=30)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.outcome.failures.append(f"{exc.code().name}: {exc.details()}")
                    continue
                with self._lock:
                    self.outcome.ok += 1
                    by = self.outcome.by_worker
                    by[reply.worker_id] = by.get(reply.worker_id, 0) + 1

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait_for_calls(self, count: int, *, timeout_s: float = 60) -> None:
        """Until ``count`` more calls ended, whether they succeeded or not."""

        def ended() -> int:
            return self.outcome.ok + len(self.outcome.failures)

        target = ended() + count
        wait_until(lambda: ended() >= target, timeout_s=timeout_s, what="calls")

    def wait_for(self, count: int, *, timeout_s: float = 60) -> None:
        """Until ``count`` more calls succeeded (traffic really flows)."""
        target = self.outcome.ok + count
        wait_until(lambda: self.outcome.ok >= target, timeout_s=timeout_s, what="traffic")


class GatewayMonitor:
    """Polls the gateway's view: the fewest READY workers and the largest staleness seen."""

    def __init__(self, c: Chaos) -> None:
        self._c = c
        self._stop = threading.Event()
        self.min_ready: int | None = None
        self.max_staleness = 0.0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                view = _gateway_view(self._c)
            except grpc.RpcError:
                continue
            ready = sum(1 for w in view.workers if w.state == READY)
            self.min_ready = ready if self.min_ready is None else min(self.min_ready, ready)
            self.max_staleness = max(self.max_staleness, view.staleness_seconds)
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> GatewayMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class RegistryEvents:
    """A watch on the registry: every event about a worker, across restarts."""

    def __init__(self, c: Chaos) -> None:
        self._c = c
        self._stop = threading.Event()
        self.events: list[tuple[int, str, int, str]] = []  # type, worker, state, reason
        self.snapshots: list[tuple[float, bool, int]] = []  # monotonic time, warming, workers
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with grpc.insecure_channel(self._c.registry) as channel:
                call = registry_pb2_grpc.RegistryServiceStub(channel).WatchWorkers(
                    registry_pb2.WatchWorkersRequest()
                )
                self._call = call
                try:
                    for message in call:
                        if message.HasField("snapshot"):
                            snap = message.snapshot
                            self.snapshots.append(
                                (time.monotonic(), snap.warming, len(snap.workers))
                            )
                        if message.HasField("event"):
                            e = message.event
                            self.events.append(
                                (e.type, e.worker.worker_id, e.worker.state, e.worker.state_reason)
                            )
                except grpc.RpcError:
                    pass
            self._stop.wait(0.1)

    def lapsed(self) -> list[tuple[int, str, int, str]]:
        """Evictions and lease-expiry marks: what a frozen registry must not emit."""
        return [
            e
            for e in self.events
            if e[0] == registry_pb2.WORKER_EVENT_TYPE_REMOVED or e[3] == "lease expired"
        ]

    def not_ready(self) -> list[str]:
        """Every state other than READY a worker went through, with its reason."""
        names = common_pb2.WorkerState.Name
        return [f"{e[1]} {names(e[2])} {e[3]!r}" for e in self.events if e[2] != READY]  # type: ignore[arg-type]

    def complete_snapshot_after(self, since: float) -> tuple[float, bool, int] | None:
        """The first snapshot after ``since`` (monotonic) from a registry not warming."""
        return next((s for s in self.snapshots if s[0] > since and not s[1]), None)

    def __enter__(self) -> RegistryEvents:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        self._thread.join(timeout=30)


def _heartbeats_after(c: Chaos, since_s: float) -> bool:
    """Both workers in the registry with a heartbeat newer than wall time ``since_s``."""
    try:
        with grpc.insecure_channel(c.registry) as channel:
            reply = registry_pb2_grpc.RegistryServiceStub(channel).ListWorkers(
                registry_pb2.RegistryServiceListWorkersRequest(), timeout=5
            )
    except grpc.RpcError:
        return False
    beats = {w.worker_id: w.last_heartbeat_at.ToNanoseconds() / 1e9 for w in reply.workers}
    return set(beats) == set(c.worker_ids) and all(t > since_s for t in beats.values())


# -- the tests ---------------------------------------------------------------------------


def test_registry_killed_and_restarted_under_load_leaves_no_routing_gap(chaos: Chaos) -> None:
    """Finding 1: a restarted registry must not blank the gateway's routing table.

    The gap opens when the gateway's watch is back on the fresh registry before the
    registrars have registered again (their next heartbeat is up to a third of the TTL
    away: 3.3 s with the default 10 s leases). The registrars are frozen across the
    restart to make that order certain; they resume once the gateway is watching again.
    """
    _baseline(chaos, LONG)
    with (
        RegistryEvents(chaos) as events,
        GatewayMonitor(chaos) as monitor,
        Traffic(chaos) as traffic,
    ):
        traffic.wait_for(20)
        killed = time.monotonic()
        _registrars(chaos.mesh, signal.SIGSTOP)
        try:
            _restart_registry(chaos)
            up = time.monotonic()
            # The gateway's watch is live on the fresh registry (its staleness back to 0),
            # which knows no worker yet: requests keep coming meanwhile.
            wait_until(
                lambda: _gateway_view(chaos).staleness_seconds == 0,
                timeout_s=30,
                interval_s=0.05,
                what="the gateway watching the fresh registry",
            )
            watching = time.monotonic()
            traffic.wait_for_calls(20)
        finally:
            _registrars(chaos.mesh, signal.SIGCONT)
        # Every registrar registers again with the fresh registry (at its next heartbeat).
        wait_until(
            lambda: set(_registry_states(chaos)) == set(chaos.worker_ids),
            timeout_s=30,
            interval_s=0.1,
            what="workers registered again",
        )
        back = time.monotonic()
        # The registry's warm-up ends: a complete snapshot (both workers) for every watcher.
        complete = wait_until(
            lambda: events.complete_snapshot_after(killed),
            timeout_s=45,
            interval_s=0.1,
            what="a complete snapshot after the restart",
        )
        traffic.wait_for(20)
    outcome = traffic.outcome
    print(
        f"\nregistry kill -9 + restart (leases {LONG[0]} ms): registry up after "
        f"{up - killed:.1f} s, gateway watching {watching - up:.1f} s later, registrars "
        f"back {back - watching:.1f} s after that; {outcome.ok} requests ok, "
        f"{len(outcome.failures)} failed ({len(outcome.no_ready_worker())} NO_READY_WORKER); "
        f"gateway's view: at least {monitor.min_ready} READY over {monitor.samples} samples; "
        f"other states: {events.not_ready()}"
    )
    assert outcome.no_ready_worker() == [], (
        f"{len(outcome.no_ready_worker())} of {outcome.ok + len(outcome.failures)} "
        f"requests failed NO_READY_WORKER: {outcome.no_ready_worker()[:3]}"
    )
    assert outcome.failures == []
    assert monitor.samples > 0 and monitor.min_ready == 2, (
        f"the gateway's view fell to {monitor.min_ready} READY workers"
    )
    assert complete is not None
    assert complete[2] == 2, f"the registry's complete snapshot lists {complete[2]} workers"


def test_registry_frozen_under_load_evicts_nothing_and_shows_staleness(chaos: Chaos) -> None:
    """Findings 1 and 5: SIGSTOP longer than TTL + eviction delay, then SIGCONT."""
    _baseline(chaos, SHORT)
    ttl_ms, evict_ms = SHORT
    frozen_for = (ttl_ms + evict_ms) / 1000 + 1.0  # longer than a lease + eviction delay
    stale_seen: list[float] = []
    gauge: list[float] = []

    def observe() -> bool:
        """Until the freeze outlived the leases and staleness showed (or 10 s passed)."""
        elapsed = time.monotonic() - frozen_at
        if not stale_seen and _gateway_view(chaos).staleness_seconds >= 2.0:
            stale_seen.append(elapsed)
            gauge.append(chaos.staleness_metric())
        return elapsed > frozen_for and (bool(stale_seen) or elapsed > 10)

    with (
        RegistryEvents(chaos) as events,
        GatewayMonitor(chaos) as monitor,
        Traffic(chaos) as traffic,
    ):
        traffic.wait_for(20)
        frozen_at = time.monotonic()
        _signal(chaos.mesh, signal.SIGSTOP)
        try:
            wait_until(observe, timeout_s=40, interval_s=0.1, what="the freeze")
        finally:
            resumed_wall = time.time()
            _signal(chaos.mesh, signal.SIGCONT)
            frozen_s = time.monotonic() - frozen_at
        wait_until(
            lambda: _heartbeats_after(chaos, resumed_wall),
            timeout_s=30,
            interval_s=0.1,
            what="heartbeats after the freeze",
        )
        wait_until(
            lambda: _gateway_view(chaos).staleness_seconds == 0,
            timeout_s=30,
            what="staleness back to 0",
        )
        # Past the sweeper's grace (one lease TTL) and a sweep or two.
        traffic.wait_for(40)
        wait_until(
            lambda: time.time() - resumed_wall > 2 * ttl_ms / 1000,
            timeout_s=30,
            interval_s=0.1,
            what="one grace period",
        )
    outcome = traffic.outcome
    print(
        f"\nregistry SIGSTOP {frozen_s:.1f} s (leases {ttl_ms}+{evict_ms} ms): gateway "
        f"staleness >= 2 s after {stale_seen[0] if stale_seen else float('nan'):.1f} s, "
        f"up to {monitor.max_staleness:.1f} s; {len(events.lapsed())} leases lapsed or "
        f"evicted; {outcome.ok} requests ok, {len(outcome.failures)} failed "
        f"({len(outcome.no_ready_worker())} NO_READY_WORKER); gateway's view: at least "
        f"{monitor.min_ready} READY; other states: {events.not_ready()}"
    )
    # A hung registry is visible, in the admin view and the gauge, well before gRPC's own
    # keepalive (a ping every 30 s, 10 s to answer) could break the stream.
    assert stale_seen, "staleness stayed below 2 s for 10 s of a frozen registry"
    assert gauge[0] >= 2.0, f"the staleness gauge read {gauge[0]}"
    assert events.lapsed() == [], f"leases lapsed during the freeze: {events.lapsed()}"
    assert _registry_states(chaos) == dict.fromkeys(chaos.worker_ids, READY)
    assert outcome.no_ready_worker() == [], (
        f"{len(outcome.no_ready_worker())} requests failed NO_READY_WORKER"
    )
    assert monitor.min_ready == 2, f"the gateway's view fell to {monitor.min_ready} READY"


def test_admin_drain_survives_a_registry_restart(chaos: Chaos) -> None:
    """Finding 2: the drained worker re-registers DRAINING and gets no traffic."""
    _baseline(chaos, chaos.leases)
    drained, other = chaos.worker_ids
    with grpc.insecure_channel(chaos.gateway) as channel:
        gateway_pb2_grpc.AdminServiceStub(channel).DrainWorker(
            gateway_pb2.DrainWorkerRequest(worker_id=drained, reason="maintenance"),
            metadata=_bearer(chaos.admin_key),
            timeout=10,
        )
    # The registrar learns of the drain from its next heartbeat's reply.
    since = time.time()
    wait_until(
        lambda: _heartbeats_after(chaos, since), timeout_s=30, interval_s=0.1, what="a heartbeat"
    )
    _restart_registry(chaos)
    want = {drained: DRAINING, other: READY}
    wait_until(
        lambda: _registry_states(chaos) == want,
        timeout_s=30,
        interval_s=0.1,
        what=f"{drained} registered again DRAINING",
    )
    # It stays DRAINING over its registrar's heartbeats, in the registry and the gateway.
    since = time.time()
    wait_until(
        lambda: _heartbeats_after(chaos, since), timeout_s=30, interval_s=0.1, what="heartbeats"
    )
    assert _registry_states(chaos) == want
    wait_until(
        lambda: _states(_gateway_view(chaos).workers) == want,
        timeout_s=30,
        what="the gateway sees the drain",
    )
    with Traffic(chaos) as traffic:
        traffic.wait_for(20)
    by_worker = traffic.outcome.by_worker
    print(f"\nafter a registry restart, drained {drained}: requests by worker {by_worker}")
    assert by_worker.get(drained, 0) == 0, by_worker
    _set_state(chaos, drained, READY)
