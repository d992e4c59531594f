"""``llmesh up --profile production`` as a real subprocess: Redis and PostgreSQL children,
two registries on Redis, two workers with registrars, memory on PostgreSQL + the Redis
session cache, two gateways sharing rate limits in Redis and keys in PostgreSQL.

One mesh for every assertion (it takes most of the test's time to start): traffic
through both gateways, a per-key limit hit across the two together, every worker seen
by both gateways although each registrar registered with one registry only, and
``llmesh status`` showing all of it; then SIGTERM stops every child, Redis and
PostgreSQL included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import psycopg
import pytest
import redis

from llmesh.testing.polling import wait_until
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from llmesh_cli.supervisor.profiles import MEMORY_DB, missing_backing
from llmesh_cli.supervisor.state import UpState, read_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "tiny-llama-test"
GENERATIONS_BURST = 4  # generations per key, shared by both gateways


def llmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmesh_cli.main", *args]


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def production(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, UpState]]:
    assert missing_backing() == [], missing_backing()
    tmp = tmp_path_factory.mktemp("production")
    home = tmp / "home"
    env = {
        **os.environ,
        "LLMESH_HOME": str(home),
        "COLUMNS": "200",
        # 4 generations a minute with a 60 s burst: 4 at once, then ~1 every 15 s.
        "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": str(GENERATIONS_BURST),
        "LLMESH_GATEWAY_RATE_LIMIT__BURST_SECONDS": "60",
    }
    log = (tmp / "up.out").open("wb")
    process = subprocess.Popen(
        llmesh(
            "up", "--profile", "production", "--home", str(home), "--free-ports",
            "--no-metrics", "--models-dir", str(tiny_model_dir), "--model", MODEL,
            "--no-embeddings", "--grace-period-s", "15",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip

    def all_running() -> UpState | None:
        assert process.poll() is None, (tmp / "up.out").read_text()
        state = read_state(home)
        if state is None or any(s.status != "running" for s in state.services):
            return None
        return state

    try:
        state = wait_until(all_running, timeout_s=120, interval_s=0.2, what="profile running")
        yield process, home, state
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        for pid in {s.pid for s in read_state(home).services} if read_state(home) else ():
            if pid and psutil.pid_exists(pid):
                psutil.Process(pid).kill()


def _addresses(state: UpState) -> dict[str, str]:
    return {s.name: s.address for s in state.services}


def _admin_key(home: Path) -> str:
    """An admin key from `llmesh keys`, which finds the profile's PostgreSQL key store."""
    created = subprocess.run(
        llmesh("keys", "create", "--role", "admin", "--tenant", "ops", "--json"),
        check=True, capture_output=True, timeout=60,
        env={**os.environ, "LLMESH_HOME": str(home)},
    )  # fmt: skip
    return str(json.loads(created.stdout)["api_key"])


def test_production_profile(
    production: tuple[subprocess.Popen[bytes], Path, UpState], tmp_path: Path
) -> None:
    process, home, state = production
    addresses = _addresses(state)
    # (+ the OpenAI HTTP door, one, in front of the first gateway, where installed)
    assert [name for name in addresses if name != "openai"] == [
        "redis", "postgres", "registry", "registry-1", "inference", "inference-1",
        "registrar", "registrar-1", "memory", "gateway", "gateway-1",
    ]  # fmt: skip
    assert state.profile == "production" and state.key_store_url is not None
    gateways = {name: grpc.insecure_channel(addresses[name]) for name in ("gateway", "gateway-1")}
    try:
        admin_key = _admin_key(home)
        admin = {n: gateway_pb2_grpc.AdminServiceStub(c) for n, c in gateways.items()}
        api = {n: gateway_pb2_grpc.GatewayServiceStub(c) for n, c in gateways.items()}

        # Each registrar registered with one registry (registrar -> registry,
        # registrar-1 -> registry-1), each gateway watches one; both see both workers.
        expected = {f"local-{addresses[w].rsplit(':', 1)[1]}" for w in ("inference", "inference-1")}

        def both_seen() -> bool:
            for stub in admin.values():
                workers = stub.ListWorkers(
                    gateway_pb2.ListWorkersRequest(), metadata=bearer(admin_key), timeout=5
                ).workers
                ready = {w.worker_id for w in workers if w.state == common_pb2.WORKER_STATE_READY}
                if ready != expected:
                    return False
            return True

        wait_until(both_seen, timeout_s=30, interval_s=0.2, what="both workers at both gateways")

        # Keys made through one gateway work at the other (one key store, PostgreSQL).
        def user_key(name: str) -> str:
            return str(
                admin["gateway-1"]
                .CreateApiKey(
                    gateway_pb2.CreateApiKeyRequest(
                        name=name, role=gateway_pb2.ROLE_USER, tenant="acme"
                    ),
                    metadata=bearer(admin_key),
                    timeout=10,
                )
                .api_key
            )

        alice, bob = user_key("alice"), user_key("bob")

        # Traffic through both gateways: a generation each, a memory written through
        # one and recalled through the other, a chat turn whose session the other reads.
        generate = gateway_pb2.GenerateRequest(
            input=common_pb2.GenerationInput(
                model=MODEL,
                prompt="Once upon a time",
                sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=4),
            )
        )
        for stub in api.values():
            reply = stub.Generate(generate, metadata=bearer(alice), timeout=60)
            assert reply.usage.completion_tokens >= 1
        kept = api["gateway"].Remember(
            gateway_pb2.RememberRequest(
                memory=common_pb2.MemoryDraft(text="the launch moved to friday")
            ),
            metadata=bearer(alice),
            timeout=10,
        )
        hits = (
            api["gateway-1"]
            .Recall(
                gateway_pb2.RecallRequest(
                    query="launch friday", options=common_pb2.RecallOptions(k=3)
                ),
                metadata=bearer(alice),
                timeout=10,
            )
            .hits
        )
        assert [h.memory.id for h in hits] == [kept.id]
        turn = list(
            api["gateway-1"].Chat(
                gateway_pb2.ChatRequest(
                    session_id="plans",
                    message="when is the launch?",
                    sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=3),
                ),
                metadata=bearer(alice),
                timeout=60,
            )
        )
        assert turn[-1].done.session_version == 1
        session = api["gateway"].GetSession(
            gateway_pb2.GetSessionRequest(session_id="plans"), metadata=bearer(alice), timeout=10
        )
        assert session.messages[0].content == "when is the launch?"
        # ... stored in PostgreSQL, the session cached in Redis.
        postgres, redis_address = addresses["postgres"], addresses["redis"]
        with psycopg.connect(f"postgresql://postgres@{postgres}/{MEMORY_DB}") as conn:
            row = conn.execute("SELECT count(*) FROM memories WHERE id = %s", (kept.id,))
            assert row.fetchone() == (1,)
        host, port = redis_address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port)) as client:
            assert client.keys("llmesh:memory:*"), "no session cached in Redis"
            assert client.keys("llmesh:rl:*"), "no rate-limit bucket in Redis"

        # One key's generation limit is shared: alternating gateways, exactly the burst
        # passes (each gateway alone would have let all six through).
        outcomes = []
        for i in range(6):
            stub = api["gateway" if i % 2 == 0 else "gateway-1"]
            try:
                stub.Generate(generate, metadata=bearer(bob), timeout=60)
                outcomes.append("ok")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                outcomes.append("limited")
        assert outcomes == ["ok"] * GENERATIONS_BURST + ["limited"] * (6 - GENERATIONS_BURST)
    finally:
        for channel in gateways.values():
            channel.close()

    # `llmesh status`: every child SERVING, both workers in every registry and gateway.
    done = subprocess.run(
        llmesh("status", "--home", str(home), "--json"),
        check=False, capture_output=True, timeout=60,
        env={**os.environ, "LLMESH_API_KEY": admin_key},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    report: dict[str, Any] = json.loads(done.stdout)
    assert {s["name"]: s["health"] for s in report["services"]} == dict.fromkeys(
        addresses, "SERVING"
    )
    assert {source: set(ids) for source, ids in report["views"].items()} == dict.fromkeys(
        ("registry", "registry-1", "gateway", "gateway-1"), expected
    )

    # SIGTERM: every child drains, Redis and PostgreSQL stop last, nothing is left.
    pids = [s.pid for s in state.services]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    for pid in pids:
        assert pid is not None and not _alive(pid), pid
    assert read_state(home) is None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
