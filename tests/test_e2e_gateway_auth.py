"""Gateway e2e (shared mesh, see e2etest.gateway_mesh): API keys and JWTs with every
auth and role outcome, tenant isolation, per-principal rate limits, no secret in any log."""

from __future__ import annotations

import time

import grpc
import jwt
import pytest
from e2etest.gateway_mesh import JWT_SECRET, MODEL, Mesh, bearer, error, greedy
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.rpc import error_details
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_every_auth_and_role_outcome(gateway_mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(gateway_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        admin = gateway_pb2_grpc.AdminServiceStub(channel)
        request = gateway_pb2.GenerateRequest(
            input=common_pb2.GenerationInput(prompt="hello", sampling=greedy(2))
        )

        missing = await error(stub.Generate(request))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        garbage = await error(stub.Generate(request, metadata=bearer("lmk_00_bad")))
        assert garbage.code() == grpc.StatusCode.UNAUTHENTICATED
        user_on_admin = await error(
            admin.ListWorkers(
                gateway_pb2.ListWorkersRequest(), metadata=bearer(gateway_mesh.keys["alice"])
            )
        )
        assert user_on_admin.code() == grpc.StatusCode.PERMISSION_DENIED

        ok = await stub.Generate(request, metadata=bearer(gateway_mesh.keys["alice"]))
        assert ok.usage.completion_tokens >= 1 and ok.model == MODEL
        workers = await admin.ListWorkers(
            gateway_pb2.ListWorkersRequest(), metadata=bearer(gateway_mesh.keys["admin"])
        )
        assert {w.worker_id for w in workers.workers} == {"w0", "w1"}

        # JWT: valid (HS256, audience), expired, wrong audience, admin via JWT.
        now = int(time.time())
        claims = {"sub": "jane", "tenant": "acme", "role": "user", "aud": "llmesh"}
        good = jwt.encode({**claims, "exp": now + 60}, JWT_SECRET, "HS256")
        assert (await stub.Generate(request, metadata=bearer(good))).text is not None
        expired = jwt.encode({**claims, "exp": now - 60}, JWT_SECRET, "HS256")
        assert (await error(stub.Generate(request, metadata=bearer(expired)))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        wrong_aud = jwt.encode({**claims, "aud": "other", "exp": now + 60}, JWT_SECRET, "HS256")
        assert (await error(stub.Generate(request, metadata=bearer(wrong_aud)))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        jwt_admin = jwt.encode({**claims, "role": "admin", "exp": now + 60}, JWT_SECRET, "HS256")
        await admin.ListWorkers(gateway_pb2.ListWorkersRequest(), metadata=bearer(jwt_admin))

        # A key created and revoked through the admin API stops working at once.
        created = await admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(name="tmp", role=gateway_pb2.ROLE_USER, tenant="acme"),
            metadata=bearer(gateway_mesh.keys["admin"]),
        )
        await stub.Generate(request, metadata=bearer(created.api_key))
        await admin.RevokeApiKey(
            gateway_pb2.RevokeApiKeyRequest(key_id=created.info.key_id),
            metadata=bearer(gateway_mesh.keys["admin"]),
        )
        revoked = await error(stub.Generate(request, metadata=bearer(created.api_key)))
        assert error_details(revoked)["error_info"].reason == "KEY_REVOKED"

        # Health needs no credentials; every failure above is in the audit log.
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(service=""))
        audit = await admin.ListAuditEvents(
            gateway_pb2.ListAuditEventsRequest(page_size=100),
            metadata=bearer(gateway_mesh.keys["admin"]),
        )
        outcomes = {(e.action.rsplit("/", 1)[-1], e.outcome) for e in audit.events}
        assert {
            ("Generate", "UNAUTHENTICATED"),
            ("ListWorkers", "PERMISSION_DENIED"),
            ("CreateApiKey", "OK"),
            ("RevokeApiKey", "OK"),
        } <= outcomes


async def test_tenant_a_never_sees_tenant_b(gateway_mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(gateway_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        alice, bob, carol = (bearer(gateway_mesh.keys[n]) for n in ("alice", "bob", "carol"))
        kept = await stub.Remember(
            gateway_pb2.RememberRequest(
                memory=common_pb2.MemoryDraft(text="acme launches the rocket on friday")
            ),
            metadata=alice,
        )
        turn = [
            c
            async for c in stub.Chat(
                gateway_pb2.ChatRequest(
                    session_id="plans", message="remember the launch", sampling=greedy(3)
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
            await error(
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
            await error(
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


async def test_rate_limit_with_retry_info(gateway_mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(gateway_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        meta = bearer(gateway_mesh.keys["dave"])
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
        await stub.ListModels(
            gateway_pb2.ListModelsRequest(), metadata=bearer(gateway_mesh.keys["bob"])
        )


def test_no_secret_in_any_log(gateway_mesh: Mesh) -> None:
    logs = b"".join(p.log.read_bytes() for p in gateway_mesh.procs)
    for key in gateway_mesh.keys.values():
        secret = key.split("_", 2)[2]
        assert secret.encode() not in logs
