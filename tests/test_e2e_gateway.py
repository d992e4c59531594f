"""End to end through the gateway against real services, each its own process:
registry, memory (SQLite), two MLX inference workers (tiny model) and the gateway
(`llmesh serve ...`). Every process exports spans over OTLP to a collector in this test.

Workers are registered in the registry by the test with a long lease (standing in for
the registrar), so a killed worker stays READY in the registry: exactly the case the
gateway's failover and circuit breaker exist for.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.polling import wait_until
from llmesh.testing.rpc import Collector, error_details
from llmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
from llmesh_cli.supervisor.plan import build_plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MODEL = "tiny-llama-test"
JWT_SECRET = b"e2e-secret-" + b"x" * 40
LLMESH = [sys.executable, "-m", "llmesh_cli.main"]


@dataclass
class Proc:
    """One child of the mesh, as the tests below handle it."""

    mesh: LocalMesh
    name: str

    @property
    def port(self) -> int:
        return self.mesh.port(self.name)

    @property
    def log(self) -> Path:
        return self.mesh.log(self.name)

    def start(self) -> None:
        self.mesh.spawn(self.name)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.mesh.stop(self.name, sig=sig)


@dataclass
class Mesh:
    gateway: str
    registry: str
    workers: dict[str, Proc]
    procs: list[Proc]
    metrics_port: int
    collector: Collector
    keys: dict[str, str] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics").read()
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _register(registry: str, worker_id: str, port: int) -> None:
    with grpc.insecure_channel(registry) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id=worker_id,
                    address=f"127.0.0.1:{port}",
                    models_loaded=[MODEL],
                    models_available=[MODEL],
                    capacity=8,
                    state=common_pb2.WORKER_STATE_READY,
                )
            ),
            timeout=5,
        )


def _gateway_env(tmp: Path) -> dict[str, str]:
    return {
        "LLMESH_GATEWAY_JWT__HS256_SECRET_FILE": str(tmp / "jwt.secret"),
        "LLMESH_GATEWAY_JWT__AUDIENCE": "llmesh",
        "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "1200",
        "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "120",
        "LLMESH_GATEWAY_RATE_LIMIT__BURST_SECONDS": "10",
        "LLMESH_GATEWAY_ROUTING__BREAKER_THRESHOLD": "3",
        "LLMESH_GATEWAY_ROUTING__BREAKER_COOLDOWN_S": "3.0",
    }


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("e2e-gateway")
    collector = Collector()
    otlp = collector.start()
    (tmp / "jwt.secret").write_bytes(JWT_SECRET)

    # The plan of `llmesh up`, two workers and no registrar: workers are registered below
    # with a long lease, so a killed worker stays READY in the registry.
    workers = {"w0": "inference", "w1": "inference-1"}
    options = mesh_options(
        tmp,
        models_dir=tiny_model_dir,
        default_model=MODEL,
        services=("registry", "inference", "memory", "gateway"),
        workers=2,
        metrics=("gateway",),
        args={
            "registry": ["--lease-ttl-ms", "600000", "--evict-after-ms", "600000"],
            **{
                name: ["--max-batch-size", "4", "--data-dir", str(tmp / wid)]
                for wid, name in workers.items()
            },
        },
        env={"gateway": _gateway_env(tmp)},
    )
    env = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
    env.update({f"LLMESH_{kind.upper()}_OTLP_ENDPOINT": otlp for kind in options.services})
    with LocalMesh(build_plan(options), home=tmp, env=env) as local:
        local.start(wait=False)
        for wid, name in workers.items():
            local.wait_ready(name)
            _register(local.address("registry"), wid, local.port(name))
        for name in ("registry", "memory", "gateway"):
            local.wait_ready(name)
        mesh = Mesh(
            gateway=local.address("gateway"),
            registry=local.address("registry"),
            workers={wid: Proc(local, name) for wid, name in workers.items()},
            procs=[Proc(local, name) for name in local.specs],
            metrics_port=options.metrics_ports["gateway"] if options.metrics_ports else 0,
            collector=collector,
        )
        # Bootstrap: the first admin key straight into the store, the rest over the API.
        mesh.keys = {"admin": local.create_key(role="admin", tenant="ops")}
        with grpc.insecure_channel(mesh.gateway) as channel:
            admin = gateway_pb2_grpc.AdminServiceStub(channel)
            for name, tenant in (
                ("alice", "acme"),
                ("bob", "globex"),
                ("carol", "acme"),
                ("dave", "initech"),
            ):
                mesh.keys[name] = admin.CreateApiKey(
                    gateway_pb2.CreateApiKeyRequest(
                        name=name, role=gateway_pb2.ROLE_USER, tenant=tenant
                    ),
                    metadata=_meta(mesh.keys["admin"]),
                    timeout=10,
                ).api_key
        try:
            yield mesh
        finally:
            collector.stop()


def _meta(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _error(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


def _greedy(max_tokens: int) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)


async def test_every_auth_and_role_outcome(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        admin = gateway_pb2_grpc.AdminServiceStub(channel)
        request = gateway_pb2.GenerateRequest(prompt="hello", sampling=_greedy(2))

        missing = await _error(stub.Generate(request))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        garbage = await _error(stub.Generate(request, metadata=_meta("lmk_00_bad")))
        assert garbage.code() == grpc.StatusCode.UNAUTHENTICATED
        user_on_admin = await _error(
            admin.ListWorkers(gateway_pb2.ListWorkersRequest(), metadata=_meta(mesh.keys["alice"]))
        )
        assert user_on_admin.code() == grpc.StatusCode.PERMISSION_DENIED

        ok = await stub.Generate(request, metadata=_meta(mesh.keys["alice"]))
        assert ok.usage.completion_tokens >= 1 and ok.model == MODEL
        workers = await admin.ListWorkers(
            gateway_pb2.ListWorkersRequest(), metadata=_meta(mesh.keys["admin"])
        )
        assert {w.worker_id for w in workers.workers} == {"w0", "w1"}

        # JWT: valid (HS256, audience), expired, wrong audience, admin via JWT.
        now = int(time.time())
        claims = {"sub": "jane", "tenant": "acme", "role": "user", "aud": "llmesh"}
        good = jwt.encode({**claims, "exp": now + 60}, JWT_SECRET, "HS256")
        assert (await stub.Generate(request, metadata=_meta(good))).text is not None
        expired = jwt.encode({**claims, "exp": now - 60}, JWT_SECRET, "HS256")
        assert (await _error(stub.Generate(request, metadata=_meta(expired)))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        wrong_aud = jwt.encode({**claims, "aud": "other", "exp": now + 60}, JWT_SECRET, "HS256")
        assert (await _error(stub.Generate(request, metadata=_meta(wrong_aud)))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        jwt_admin = jwt.encode({**claims, "role": "admin", "exp": now + 60}, JWT_SECRET, "HS256")
        await admin.ListWorkers(gateway_pb2.ListWorkersRequest(), metadata=_meta(jwt_admin))

        # A key created and revoked through the admin API stops working at once.
        created = await admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(name="tmp", role=gateway_pb2.ROLE_USER, tenant="acme"),
            metadata=_meta(mesh.keys["admin"]),
        )
        await stub.Generate(request, metadata=_meta(created.api_key))
        await admin.RevokeApiKey(
            gateway_pb2.RevokeApiKeyRequest(key_id=created.info.key_id),
            metadata=_meta(mesh.keys["admin"]),
        )
        revoked = await _error(stub.Generate(request, metadata=_meta(created.api_key)))
        assert error_details(revoked)["error_info"].reason == "KEY_REVOKED"

        # Health needs no credentials; every failure above is in the audit log.
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(service=""))
        audit = await admin.ListAuditEvents(
            gateway_pb2.ListAuditEventsRequest(page_size=100), metadata=_meta(mesh.keys["admin"])
        )
        outcomes = {(e.action.rsplit("/", 1)[-1], e.outcome) for e in audit.events}
        assert {
            ("Generate", "UNAUTHENTICATED"),
            ("ListWorkers", "PERMISSION_DENIED"),
            ("CreateApiKey", "OK"),
            ("RevokeApiKey", "OK"),
        } <= outcomes


async def test_tenant_a_never_sees_tenant_b(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        alice, bob, carol = (_meta(mesh.keys[n]) for n in ("alice", "bob", "carol"))
        kept = await stub.Remember(
            gateway_pb2.RememberRequest(text="acme launches the rocket on friday"), metadata=alice
        )
        turn = [
            c
            async for c in stub.Chat(
                gateway_pb2.ChatRequest(
                    session_id="plans", message="remember the launch", sampling=_greedy(3)
                ),
                metadata=alice,
            )
        ]
        assert turn[-1].done.session_version == 1

        query = gateway_pb2.RecallRequest(
            query="rocket launch friday", options=common_pb2.RecallOptions(k=5)
        )
        assert list((await stub.Recall(query, metadata=bob)).hits) == []
        assert (
            await _error(
                stub.GetSession(gateway_pb2.GetSessionRequest(session_id="plans"), metadata=bob)
            )
        ).code() == grpc.StatusCode.NOT_FOUND
        assert (
            list(
                (await stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=bob)).sessions
            )
            == []
        )
        forgot = await stub.Forget(gateway_pb2.ForgetRequest(ids=[kept.id]), metadata=bob)
        assert forgot.deleted == 0
        assert (
            await _error(
                stub.DeleteSession(
                    gateway_pb2.DeleteSessionRequest(session_id="plans"), metadata=bob
                )
            )
        ).code() == grpc.StatusCode.NOT_FOUND
        # Same tenant, other key: sees it. The tenant comes from the key, nothing else.
        hits = (await stub.Recall(query, metadata=carol)).hits
        assert [h.memory.id for h in hits] == [kept.id]
        session = await stub.GetSession(
            gateway_pb2.GetSessionRequest(session_id="plans"), metadata=carol
        )
        assert session.messages[0].content == "remember the launch"


async def test_chat_turn_appended_once_when_retried_and_traced(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        meta = _meta(mesh.keys["carol"])
        await stub.Remember(
            gateway_pb2.RememberRequest(text="carol prefers green tea"), metadata=meta
        )
        request = gateway_pb2.ChatRequest(
            session_id="retry-1",
            message="what tea do I like?",
            recall=common_pb2.RecallOptions(k=3),
            sampling=_greedy(4),
        )
        first = [c async for c in stub.Chat(request, metadata=(*meta, ("x-request-id", "chat-1")))]
        assert first[0].start.memory_ids and first[-1].done.session_version == 1
        assert first[-1].done.usage.completion_tokens >= 1
        # The client did not see the answer and retries the very same turn (same
        # request id, as a transparent retry sends it): a replay, not a second turn.
        again = [c async for c in stub.Chat(request, metadata=(*meta, ("x-request-id", "chat-1")))]
        assert again[-1].done.session_version == 1 and again[-1].done.replayed
        assert again[-1].done.usage == first[-1].done.usage
        session = await stub.GetSession(
            gateway_pb2.GetSessionRequest(session_id="retry-1"), metadata=meta
        )
        assert session.session.version == 1 and len(session.messages) == 2

    # One trace: the gateway's Chat span, memory's spans (GetSession, Recall, Append) and
    # inference's spans (Generate, and Embed called by memory for the recall).
    def chat_trace() -> dict[str, set[str]] | None:
        spans = list(mesh.collector.spans)
        roots = [
            s for svc, s in spans if svc == "gateway" and s.name.endswith("GatewayService/Chat")
        ]
        for root in roots:
            names: dict[str, set[str]] = {}
            for service, span in spans:
                if span.trace_id == root.trace_id:
                    names.setdefault(service, set()).add(span.name)
            wanted = ("gateway", "memory", "inference")
            if (
                all(s in names for s in wanted)
                and all(any(rpc in n for n in names["inference"]) for rpc in ("Generate", "Embed"))
                and all(
                    any(rpc in n for n in names["memory"])
                    for rpc in ("GetSession", "Recall", "AppendMessages")
                )
            ):
                return names
        return None

    # Spans arrive from three processes in their own time: wait for the whole set.
    names = wait_until(chat_trace, timeout_s=15, what="a Chat trace across three services")
    assert names is not None


async def test_rate_limit_with_retry_info(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        meta = _meta(mesh.keys["dave"])
        refused = None
        for _ in range(100):  # 120/min with 10 s of burst: about the 21st call is refused
            try:
                await stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=meta)
            except grpc.aio.AioRpcError as exc:
                refused = exc
                break
        assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = error_details(refused)
        assert 0 < details["retry_info"].retry_delay.ToMilliseconds() <= 1000
        assert details["quota_failure"].violations[0].subject.startswith("principal:")
        # Other principals keep their own budget.
        await stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=_meta(mesh.keys["bob"]))


async def test_cancel_reaches_the_worker(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for attempt in range(5):
            request_id = f"cancel-me-{attempt}"
            call = stub.GenerateStream(
                gateway_pb2.GenerateStreamRequest(
                    prompt=f"tell me a long story {attempt}",
                    sampling=common_pb2.SamplingParams(
                        temperature=1.0, seed=attempt, max_tokens=900
                    ),
                ),
                metadata=(*_meta(mesh.keys["alice"]), ("x-request-id", request_id)),
            )
            first: Any = await call.read()
            worker = mesh.workers[first.start.worker_id]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as wch:
                stats_stub = inference_pb2_grpc.InferenceServiceStub(wch)
                before = await stats_stub.Stats(inference_pb2.StatsRequest())
                if request_id not in [r.request_id for r in before.requests]:
                    call.cancel()
                    continue  # finished already (early EOS); try a longer one
                call.cancel()

                async def gone(stub: Any = stats_stub, rid: str = request_id) -> bool:
                    stats = await stub.Stats(inference_pb2.StatsRequest())
                    return rid not in [r.request_id for r in stats.requests]

                deadline = time.monotonic() + 5
                while not await gone():
                    assert time.monotonic() < deadline, "the worker kept the cancelled request"
                    await asyncio.sleep(0.02)
                after = await stats_stub.Stats(inference_pb2.StatsRequest())
                assert after.requests_cancelled_total > before.requests_cancelled_total
                return
        pytest.fail("no generation stayed active long enough to cancel")


def test_cli_generate_and_chat(mesh: Mesh) -> None:
    env = {**os.environ, "LLMESH_API_KEY": mesh.keys["carol"], "LLMESH_TARGET": mesh.gateway}
    generated = subprocess.run(
        [*LLMESH, "generate", "--max-tokens", "4", "--temperature", "0", "--usage", "Hello"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert generated.returncode == 0, generated.stderr
    assert b"completion tokens" in generated.stderr
    chat = subprocess.run(
        [*LLMESH, "chat", "--session-id", "cli-1", "--max-tokens", "3", "--temperature", "0"],
        input=b"first message\nsecond message\n/session\n/quit\n",
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert chat.returncode == 0, chat.stderr
    assert b"user: first message" in chat.stdout and b"user: second message" in chat.stdout
    refused = subprocess.run(
        [*LLMESH, "generate", "x"],
        env={**env, "LLMESH_API_KEY": "lmk_0_bad"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and b"UNAUTHENTICATED" in refused.stderr


def test_no_secret_in_any_log(mesh: Mesh) -> None:
    logs = b"".join(p.log.read_bytes() for p in mesh.procs)
    for key in mesh.keys.values():
        secret = key.split("_", 2)[2]
        assert secret.encode() not in logs


async def test_registry_down_routing_goes_on_from_the_last_snapshot(mesh: Mesh) -> None:
    """Stops the registry for good: the remaining tests route from the cached snapshot."""
    registry = next(p for p in mesh.procs if p.name == "registry")
    registry.stop(signal.SIGKILL)  # gone without a goodbye
    wait_until(
        lambda: mesh.metric("gateway_registry_staleness_seconds") > 0,
        timeout_s=10,
        what="staleness to grow",
    )
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        reply = await stub.Generate(
            gateway_pb2.GenerateRequest(prompt="still there?", sampling=_greedy(1)),
            metadata=_meta(mesh.keys["alice"]),
        )
        assert reply.worker_id in mesh.workers
        listed = await gateway_pb2_grpc.AdminServiceStub(channel).ListWorkers(
            gateway_pb2.ListWorkersRequest(), metadata=_meta(mesh.keys["admin"])
        )
        assert listed.staleness_seconds > 0 and len(listed.workers) == 2
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_failover_and_breaker_when_a_worker_dies(mesh: Mesh) -> None:
    """Runs last: kills w0 before a request reaches it, then restarts it."""
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        meta = _meta(mesh.keys["admin"])
        # Find session ids whose affinity sends them to w0.
        to_w0: list[str] = []
        for i in range(60):
            reply = await stub.Generate(
                gateway_pb2.GenerateRequest(prompt="hi", sampling=_greedy(1), session_id=f"s{i}"),
                metadata=meta,
            )
            if reply.worker_id == "w0":
                to_w0.append(f"s{i}")
            if len(to_w0) >= 8:
                break
        assert len(to_w0) >= 8
        failovers_before = mesh.metric("gateway_failovers_total")

        mesh.workers["w0"].stop(signal.SIGKILL)
        for session_id in to_w0:
            chunks = [
                c
                async for c in stub.GenerateStream(
                    gateway_pb2.GenerateStreamRequest(
                        prompt="hi", sampling=_greedy(2), session_id=session_id
                    ),
                    metadata=meta,
                )
            ]
            assert chunks[0].start.worker_id == "w1"  # failed over before the first token
            assert chunks[-1].done.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
        # The breaker opened after 3 consecutive failures: w0 is no longer tried.
        assert mesh.metric("gateway_failovers_total") - failovers_before == 3

        # The worker comes back on the same address; after the cooldown a probe closes it.
        mesh.workers["w0"].start()
        mesh.workers["w0"].mesh.wait_ready("inference")

        async def served_by_w0() -> bool:
            reply = await stub.Generate(
                gateway_pb2.GenerateRequest(prompt="hi", sampling=_greedy(1), session_id=to_w0[0]),
                metadata=meta,
            )
            return reply.worker_id == "w0"

        deadline = time.monotonic() + 15
        while not await served_by_w0():
            assert time.monotonic() < deadline, "the breaker never closed"
            await asyncio.sleep(0.2)
