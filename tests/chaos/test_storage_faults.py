"""Storage faults under load: PostgreSQL stopped and restarted while clients write,
Redis stopped while the gateways limit and the memory service caches sessions.

The mesh of this module: its own Redis and PostgreSQL (+pgvector) as children, exactly
as ``llmesh up --profile production`` runs them (so a test can stop them without
touching the session-wide servers of other tests), a registry, the memory service on
PostgreSQL with the Redis session cache, and two gateways with their rate limits in
Redis: ``gateway`` fails open when Redis fails (the default, docs/gateway.md),
``gateway-1`` fails closed.

What must hold (issue 19, docs/reliability.md "Storage faults"):

- PostgreSQL stopped (immediate shutdown: a crash for the clients) during
  ``AppendMessages`` and ``Remember`` load, then restarted: every acknowledged write is
  there afterwards, in order, exactly once (clients retry a failed call with the same
  idempotency key until it is acknowledged); the failures meanwhile are ``UNAVAILABLE``
  (``STORE_UNAVAILABLE``) or ``DEADLINE_EXCEEDED``, never ``INTERNAL``/``UNKNOWN``; once
  the memory service's readiness has noticed, a call is refused ``UNAVAILABLE`` at once
  instead of waiting out its deadline (also through the gateway, with no address in the
  message).
- Redis stopped: the fail-open gateway admits calls past the limit (and counts the
  failures in ``gateway_ratelimit_backend_failures_total{mode="open"}``), the
  fail-closed one refuses with ``UNAVAILABLE``/``RATE_LIMITER_UNAVAILABLE`` and a retry
  hint; sessions are served, complete and current, from PostgreSQL; once Redis is
  back the limits apply again and nothing stale is served.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest

from llmesh.testing.polling import wait_until
from llmesh.testing.rpc import error_details
from llmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)
from llmesh_cli.supervisor.mesh import LocalMesh, free_port, mesh_options, readiness
from llmesh_cli.supervisor.plan import build_plan
from llmesh_cli.supervisor.profiles import MEMORY_DB, Backing, backing_specs, missing_backing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_backing()), reason="; ".join(missing_backing())),
]

TENANT = "chaos"
CACHE_TTL_S = 3.0  # the memory service's session cache: entry lifetime and bypass window
# Per principal: a burst of 5 requests, then one per 10 s (a burst of 20 is refused
# from its 6th call however slow the box).
LIMITS = {
    "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "6",
    "LLMESH_GATEWAY_RATE_LIMIT__BURST_SECONDS": "50",
}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class StorageMesh:
    mesh: LocalMesh
    backing: Backing
    keys: dict[str, str]
    metrics_port: int

    @property
    def memory(self) -> str:
        return self.mesh.address("memory")

    def gateway(self, name: str = "gateway") -> str:
        return self.mesh.address(name)

    def metric(self, name: str, label: str = "") -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read()
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name) and label in line and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def restart(self, name: str) -> None:
        self.mesh.spawn(name)
        self.mesh.wait_ready(name, timeout_s=120)


def _alive(address: str) -> bool:
    return readiness(address, service="liveness") == 1  # SERVING


@pytest.fixture(scope="module")
def storage_mesh() -> Iterator[StorageMesh]:
    # Not under pytest's temporary root: as root, PostgreSQL runs as the `pgserver` user,
    # and any pytest starting meanwhile (another session's) resets that root to mode 0700,
    # which locks a *restarted* PostgreSQL out of its own data directory.
    home = Path(tempfile.mkdtemp(prefix="llmesh-chaos-storage-"))
    try:
        yield from _storage_mesh(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _storage_mesh(home: Path) -> Iterator[StorageMesh]:
    backing = Backing(redis_port=free_port(), postgres_port=free_port())
    options = mesh_options(
        home,
        models_dir=home / "models",
        default_model="",
        services=("registry", "memory", "gateway"),
        replicas={"gateway": 2},
        metrics=("gateway",),
        env={
            "memory": {
                "LLMESH_MEMORY_STORE": "postgres",
                "LLMESH_MEMORY_POSTGRES_DSN": backing.postgres_url(MEMORY_DB),
                "LLMESH_MEMORY_REDIS_URL": backing.redis_url,
                "LLMESH_MEMORY_SESSION_CACHE_TTL_S": str(CACHE_TTL_S),
                "LLMESH_MEMORY_EMBEDDER_TARGET": "",  # keyword search; no worker needed
                "LLMESH_MEMORY_READINESS_INTERVAL_S": "0.5",
            },
            "gateway": {
                **LIMITS,
                "LLMESH_GATEWAY_RATE_LIMIT__BACKEND": "redis",
                "LLMESH_GATEWAY_RATE_LIMIT__REDIS_URL": backing.redis_url,
            },
            "gateway-1": {
                **LIMITS,
                "LLMESH_GATEWAY_RATE_LIMIT__BACKEND": "redis",
                "LLMESH_GATEWAY_RATE_LIMIT__REDIS_URL": backing.redis_url,
                "LLMESH_GATEWAY_RATE_LIMIT__FAIL_OPEN": "false",
            },
        },
    )
    specs = [*backing_specs(home, backing), *build_plan(options)]
    with LocalMesh(specs, home=home) as mesh:
        mesh.start("redis", "postgres", "registry", "memory")
        # The gateways are never *ready* here (no worker to route to): wait for liveness.
        for name in ("gateway", "gateway-1"):
            mesh.spawn(name)
        for name in ("gateway", "gateway-1"):
            wait_until(lambda n=name: _alive(mesh.address(n)), timeout_s=60, what=f"{name} up")
        keys = {
            who: mesh.create_key(role="user", tenant=TENANT)
            for who in ("limited", "sessions", "closed")
        }
        assert options.metrics_ports is not None
        yield StorageMesh(mesh, backing, keys, options.metrics_ports["gateway"])


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _reason(exc: grpc.RpcError) -> str:
    info = error_details(exc).get("error_info")
    return info.reason if info is not None else ""


# --- PostgreSQL stopped under write load --------------------------------------------------


@dataclass
class Writer:
    """One client: appends to its own session and stores memories, retrying each write
    with the same idempotency key until it is acknowledged."""

    index: int
    acked_appends: list[str] = field(default_factory=list)
    acked_memories: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    last_ack: float = 0.0

    @property
    def session(self) -> str:
        return f"chaos-w{self.index}"

    async def _retry(self, call: object) -> object:
        give_up = time.monotonic() + 120
        while True:
            try:
                return await call()  # type: ignore[operator]
            except grpc.aio.AioRpcError as exc:
                self.failures[f"{exc.code().name}/{_reason(exc)}"] += 1
                if exc.code() not in RETRYABLE or time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.2)

    async def run(self, stub: memory_pb2_grpc.MemoryServiceStub, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            content = f"w{self.index} message {i}"
            request = memory_pb2.AppendMessagesRequest(
                namespace=TENANT,
                session_id=self.session,
                messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=content)],
                expected_version=len(self.acked_appends),
                idempotency_key=f"{self.session}-{i}",
            )
            reply = await self._retry(lambda r=request: stub.AppendMessages(r, timeout=3))
            assert reply.version == len(self.acked_appends) + 1, (content, reply)  # type: ignore[attr-defined]
            self.acked_appends.append(content)
            text = f"writer {self.index} fact number {i}"
            memory = memory_pb2.MemoryServiceRememberRequest(
                namespace=TENANT,
                memory=common_pb2.MemoryDraft(text=text, idempotency_key=f"{self.session}-m{i}"),
            )
            await self._retry(lambda r=memory: stub.Remember(r, timeout=3))
            self.acked_memories.append(text)
            self.last_ack = time.monotonic()
            i += 1


async def _remember_through_gateway(mesh: StorageMesh) -> tuple[str, str, str] | None:
    """One Remember through the gateway (3 s deadline): None if it succeeded, else
    (code, reason, message)."""
    async with grpc.aio.insecure_channel(mesh.gateway()) as channel:
        try:
            await gateway_pb2_grpc.GatewayServiceStub(channel).Remember(
                gateway_pb2.RememberRequest(
                    memory=common_pb2.MemoryDraft(text="stored while the database is down")
                ),
                metadata=bearer(mesh.keys["sessions"]),
                timeout=3,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, _reason(exc), exc.details() or ""
    return None


async def _write_through_outage(mesh: StorageMesh, writers: list[Writer]) -> dict[str, float]:
    async with grpc.aio.insecure_channel(mesh.memory) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stub, stop)) for w in writers]

        async def acked() -> int:
            return sum(len(w.acked_appends) for w in writers)

        async def until(predicate: object, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not predicate():  # type: ignore[operator]
                for task in tasks:
                    if task.done():
                        task.result()  # a writer that failed for good fails the test
                assert time.monotonic() < deadline, "writers made no progress"
                await asyncio.sleep(0.05)

        await until(lambda: sum(len(w.acked_appends) for w in writers) >= 20, 60)
        before = await acked()
        stopped_at = time.monotonic()
        await asyncio.to_thread(mesh.mesh.stop, "postgres", sig=signal.SIGQUIT)  # immediate
        # Once the memory service has seen it (readiness NOT_SERVING), calls are refused
        # at once: UNAVAILABLE, not a wait until the deadline.
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(readiness, mesh.memory) == 1:  # SERVING
            assert time.monotonic() < deadline, "memory still ready with PostgreSQL stopped"
            await asyncio.sleep(0.2)
        outage_error = await _remember_through_gateway(mesh)
        await asyncio.sleep(1.0)  # an outage of a few seconds, under load
        during = await acked()
        # Spawned from this (the main) thread: the child dies with the thread that
        # started it (PR_SET_PDEATHSIG), and a worker thread of to_thread() ends early.
        mesh.mesh.spawn("postgres")
        await asyncio.to_thread(mesh.mesh.wait_ready, "postgres", timeout_s=120)
        restarted_at = time.monotonic()
        target = {w.index: len(w.acked_appends) + 5 for w in writers}
        await until(lambda: all(len(w.acked_appends) >= target[w.index] for w in writers), 90)
        recovered_s = min(w.last_ack for w in writers) - restarted_at
        stop.set()
        await asyncio.gather(*tasks)
        assert outage_error is not None, "a Remember succeeded with PostgreSQL stopped"
        code, reason, message = outage_error
        # What a client of the gateway sees: retryable, with a reason, no topology.
        assert code == "UNAVAILABLE", outage_error
        assert reason in ("STORE_UNAVAILABLE", "MEMORY_UNAVAILABLE"), outage_error
        assert "127.0.0.1" not in message and "ipv4" not in message, message
        return {
            "acked_before": before,
            "acked_during": during - before,
            "outage_s": restarted_at - stopped_at,
            "recovered_s": recovered_s,
        }


def test_postgres_stopped_under_write_load_loses_and_duplicates_nothing(
    storage_mesh: StorageMesh,
) -> None:
    writers = [Writer(i) for i in range(6)]
    figures = asyncio.run(_write_through_outage(storage_mesh, writers))
    failures: Counter[str] = sum((w.failures for w in writers), Counter())
    figures["acked_appends"] = sum(len(w.acked_appends) for w in writers)
    figures["acked_memories"] = sum(len(w.acked_memories) for w in writers)
    print(f"postgres outage: {figures}, failures {dict(failures)}")  # for docs/reliability.md
    assert failures, "the outage produced no failed call: nothing was tested"
    for kind in failures:
        code, _, reason = kind.partition("/")
        assert code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), kind
        if code == "UNAVAILABLE":
            assert reason in ("STORE_UNAVAILABLE", "MEMORY_UNAVAILABLE"), kind

    # Every acknowledged write is there, in order, exactly once: read PostgreSQL itself.
    with psycopg.connect(storage_mesh.backing.postgres_url(MEMORY_DB)) as conn:
        for w in writers:
            rows = conn.execute(
                "SELECT seq, content FROM messages WHERE namespace = %s AND session_id = %s "
                "ORDER BY seq",
                (TENANT, w.session),
            ).fetchall()
            assert [c for _, c in rows] == w.acked_appends, w.session
            (version,) = conn.execute(
                "SELECT version FROM sessions WHERE namespace = %s AND session_id = %s",
                (TENANT, w.session),
            ).fetchone() or (None,)
            assert version == len(w.acked_appends)
        counts = dict(
            conn.execute(
                "SELECT text, count(*) FROM memories WHERE namespace = %s GROUP BY text",
                (TENANT,),
            ).fetchall()
        )
    for w in writers:
        for text in w.acked_memories:
            assert counts.get(text) == 1, (text, counts.get(text))

    # And the service reads the same (the session cache in front holds nothing stale).
    with grpc.insecure_channel(storage_mesh.memory) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        for w in writers:
            reply = stub.GetSession(
                memory_pb2.MemoryServiceGetSessionRequest(
                    namespace=TENANT, session_id=w.session, limit=1000
                ),
                timeout=10,
            )
            assert [m.content for m in reply.messages] == w.acked_appends


# --- Redis stopped ------------------------------------------------------------------------


def _list_sessions(address: str, key: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=bearer(key), timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK


def _burst(address: str, key: str, n: int = 20) -> Counter[grpc.StatusCode]:
    return Counter(_list_sessions(address, key) for _ in range(n))


def _append(address: str, session: str, version: int, content: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = memory_pb2_grpc.MemoryServiceStub(channel).AppendMessages(
            memory_pb2.AppendMessagesRequest(
                namespace=TENANT,
                session_id=session,
                messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=content)],
                expected_version=version,
                idempotency_key=f"{session}-{version}",
            ),
            timeout=10,
        )
    return int(reply.version)


def _session_via_gateway(mesh: StorageMesh, session: str) -> tuple[int, list[str]]:
    with grpc.insecure_channel(mesh.gateway()) as channel:
        reply = gateway_pb2_grpc.GatewayServiceStub(channel).GetSession(
            gateway_pb2.GetSessionRequest(session_id=session, limit=100),
            metadata=bearer(mesh.keys["sessions"]),
            timeout=10,
        )
    return reply.session.version, [m.content for m in reply.messages]


def _session_direct(mesh: StorageMesh, session: str) -> tuple[int, list[str]]:
    """The session as the memory service serves it (no gateway, no rate limit)."""
    with grpc.insecure_channel(mesh.memory) as channel:
        reply = memory_pb2_grpc.MemoryServiceStub(channel).GetSession(
            memory_pb2.MemoryServiceGetSessionRequest(
                namespace=TENANT, session_id=session, limit=100
            ),
            timeout=10,
        )
    return reply.session.version, [m.content for m in reply.messages]


def test_redis_stopped_limits_follow_their_policy_and_sessions_come_from_postgres(
    storage_mesh: StorageMesh,
) -> None:
    mesh, keys = storage_mesh, storage_mesh.keys
    session = f"redis-{time.monotonic_ns()}"
    contents = [f"before {i}" for i in range(3)]
    for i, content in enumerate(contents):
        _append(mesh.memory, session, i, content)
    assert _session_via_gateway(mesh, session) == (3, contents)  # read once: now cached

    # Redis up: the burst is limited on both gateways.
    assert _burst(mesh.gateway(), keys["limited"])[grpc.StatusCode.RESOURCE_EXHAUSTED] > 0
    failures_before = mesh.metric("gateway_ratelimit_backend_failures", 'mode="open"')

    mesh.mesh.stop("redis", sig=signal.SIGKILL)
    try:
        # Fail open (gateway, the default): every call admitted, the failures counted.
        burst = _burst(mesh.gateway(), keys["limited"])
        assert burst == Counter({grpc.StatusCode.OK: 20}), burst
        open_failures = mesh.metric("gateway_ratelimit_backend_failures", 'mode="open"')
        assert open_failures >= failures_before + 20
        # Fail closed (gateway-1): refused, retryable, with the reason.
        with (
            grpc.insecure_channel(mesh.gateway("gateway-1")) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            gateway_pb2_grpc.GatewayServiceStub(channel).ListSessions(
                gateway_pb2.ListSessionsRequest(), metadata=bearer(keys["closed"]), timeout=10
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        details = error_details(info.value)
        assert details["error_info"].reason == "RATE_LIMITER_UNAVAILABLE"
        assert details["retry_info"].retry_delay.ToTimedelta().total_seconds() > 0

        # Sessions: written and read without Redis, complete and current.
        for i in range(3, 5):
            contents.append(f"during {i}")
            assert _append(mesh.memory, session, i, contents[-1]) == i + 1
        assert _session_via_gateway(mesh, session) == (5, contents)
    finally:
        mesh.restart("redis")  # empty: nothing was persisted

    # Redis back: the fail-closed gateway admits again, limits apply again.
    wait_until(
        lambda: _list_sessions(mesh.gateway("gateway-1"), keys["closed"]) == grpc.StatusCode.OK,
        timeout_s=30,
        interval_s=0.2,
        what="the fail-closed gateway to admit again",
    )
    wait_until(
        lambda: _burst(mesh.gateway(), keys["limited"])[grpc.StatusCode.RESOURCE_EXHAUSTED] > 0,
        timeout_s=30,
        interval_s=0.5,
        what="limits to apply again",
    )
    contents.append("after")
    assert _append(mesh.memory, session, 5, "after") == 6
    assert _session_via_gateway(mesh, session) == (6, contents)


def test_redis_frozen_and_thawed_serves_nothing_stale(storage_mesh: StorageMesh) -> None:
    """SIGSTOP keeps Redis's copy of a session while appends go on without it: after
    SIGCONT every read is the current session, never the copy from before the freeze."""
    mesh = storage_mesh
    session = f"frozen-{time.monotonic_ns()}"
    contents = ["one", "two"]
    for i, content in enumerate(contents):
        _append(mesh.memory, session, i, content)
    assert _session_direct(mesh, session) == (2, contents)  # cached at version 2

    pid = mesh.mesh.pid("redis")
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in (2, 3):
            contents.append(f"frozen {i}")
            assert _append(mesh.memory, session, i, contents[-1]) == i + 1
        assert _session_direct(mesh, session) == (4, contents)
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 3 * CACHE_TTL_S
    while time.monotonic() < deadline:  # across the end of the bypass window
        assert _session_direct(mesh, session) == (4, contents)
        time.sleep(0.2)
    contents.append("thawed")
    assert _append(mesh.memory, session, 4, "thawed") == 5
    assert _session_via_gateway(mesh, session) == (5, contents)
