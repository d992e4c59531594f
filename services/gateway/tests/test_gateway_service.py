"""The gateway served in-process over real gRPC: auth, roles, audit, validation, rate
limits, chat, tenants and admin (routing and failover: ``test_gateway_routing.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.polling import await_until
from llmesh.v1 import common_pb2, gateway_pb2

pytestmark = pytest.mark.timeout(60)


async def test_auth_outcomes_and_audit(mesh: Any) -> None:
    stub, admin = mesh.stub(), mesh.admin()
    request = gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="hi"))
    missing = await mesh.failure(stub.Generate(request))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert mesh.details(missing)["error_info"].reason == "MISSING_CREDENTIALS"
    bad = await mesh.failure(stub.Generate(request, metadata=mesh.auth("lmk_0011_nope")))
    assert bad.code() == grpc.StatusCode.UNAUTHENTICATED
    denied = await mesh.failure(
        admin.ListWorkers(gateway_pb2.ListWorkersRequest(), metadata=mesh.auth(mesh.user_key))
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    ok = await stub.Generate(request, metadata=mesh.auth(mesh.user_key))
    assert ok.text.startswith("echo:hi") and ok.worker_id in mesh.workers
    # Admin keys can call user methods too; health needs no credentials.
    await stub.Generate(request, metadata=mesh.auth(mesh.admin_key))
    health = health_pb2_grpc.HealthStub(mesh.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="readiness"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Reflection too (grpcurl works before you have a key).
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(mesh.channel)
    answers = [
        a
        async for a in reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    ]
    names = {s.name for s in answers[0].list_services_response.service}
    assert "llmesh.v1.GatewayService" in names

    events = await admin.ListAuditEvents(
        gateway_pb2.ListAuditEventsRequest(), metadata=mesh.auth(mesh.admin_key)
    )
    outcomes = [(e.action.rsplit("/", 1)[-1], e.outcome) for e in events.events]
    assert ("ListWorkers", "PERMISSION_DENIED") in outcomes
    assert outcomes.count(("Generate", "UNAUTHENTICATED")) == 2
    # The audit call itself is audited afterwards.
    again = await admin.ListAuditEvents(
        gateway_pb2.ListAuditEventsRequest(page_size=1), metadata=mesh.auth(mesh.admin_key)
    )
    assert again.events[0].action.endswith("ListAuditEvents") and again.next_page_token


async def test_key_lifecycle_through_admin_api(mesh: Any) -> None:
    admin = mesh.admin()
    meta = mesh.auth(mesh.admin_key)
    created = await admin.CreateApiKey(
        gateway_pb2.CreateApiKeyRequest(name="svc", role=gateway_pb2.ROLE_USER, tenant="acme"),
        metadata=meta,
    )
    assert created.api_key.startswith("lmk_") and created.info.fingerprint
    await mesh.stub().Generate(
        gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="x")),
        metadata=mesh.auth(created.api_key),
    )
    listed = await admin.ListApiKeys(gateway_pb2.ListApiKeysRequest(), metadata=meta)
    assert created.info.key_id in [k.key_id for k in listed.keys]
    assert created.api_key not in str(listed)
    revoked = await admin.RevokeApiKey(
        gateway_pb2.RevokeApiKeyRequest(key_id=created.info.key_id), metadata=meta
    )
    assert revoked.info.HasField("revoked_at")
    refused = await mesh.failure(
        mesh.stub().Generate(
            gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="x")),
            metadata=mesh.auth(created.api_key),
        )
    )
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    bad = await mesh.failure(
        admin.CreateApiKey(gateway_pb2.CreateApiKeyRequest(name=""), metadata=meta)
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in mesh.details(bad)["bad_request"].field_violations}
    assert fields == {"name", "role", "tenant"}
    events = await admin.ListAuditEvents(gateway_pb2.ListAuditEventsRequest(), metadata=meta)
    details = " ".join(e.detail for e in events.events)
    assert f"created key_id={created.info.key_id}" in details
    assert f"revoked key_id={created.info.key_id}" in details


async def test_create_api_key_retry_with_request_id_returns_the_same_key(mesh: Any) -> None:
    admin = mesh.admin()
    meta = mesh.auth(mesh.admin_key)
    request = gateway_pb2.CreateApiKeyRequest(
        name="ci",
        role=gateway_pb2.ROLE_USER,
        tenant="acme",
        ttl=duration_pb2.Duration(seconds=3600),
        request_id="deploy-42",
    )
    first = await admin.CreateApiKey(request, metadata=meta)
    retry = await admin.CreateApiKey(request, metadata=meta)
    assert first.api_key.startswith("lmk_") and retry.api_key == ""
    assert retry.info == first.info
    lifetime = first.info.expires_at.seconds - first.info.created_at.seconds
    assert 3599 <= lifetime <= 3601
    listed = await admin.ListApiKeys(gateway_pb2.ListApiKeysRequest(), metadata=meta)
    assert [k.key_id for k in listed.keys].count(first.info.key_id) == 1
    await mesh.stub().Generate(
        gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="x")),
        metadata=mesh.auth(first.api_key),
    )
    request.role = gateway_pb2.ROLE_ADMIN
    reused = await mesh.failure(admin.CreateApiKey(request, metadata=meta))
    assert reused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert mesh.details(reused)["error_info"].reason == "IDEMPOTENCY_KEY_REUSED"


async def test_validation_reaches_the_client_as_bad_request(mesh: Any) -> None:
    error = await mesh.failure(
        mesh.stub().Generate(
            gateway_pb2.GenerateRequest(
                input=common_pb2.GenerationInput(
                    prompt="", sampling=common_pb2.SamplingParams(top_p=2.0)
                )
            ),
            metadata=mesh.auth(mesh.user_key),
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in mesh.details(error)["bad_request"].field_violations}
    assert fields == {"input.prompt", "input.sampling.top_p"}
    assert all(w.calls == 0 for w in mesh.workers.values())


async def test_rate_limits_return_retry_info_and_quota_failure(mesh_factory: Any) -> None:
    async with mesh_factory(
        rate_limit={"generations_per_minute": 6, "burst_seconds": 10, "requests_per_minute": 6}
    ) as mesh:
        meta = mesh.auth(mesh.user_key)
        for _ in range(1):
            await mesh.stub().Generate(
                gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="p")),
                metadata=meta,
            )
        error = await mesh.failure(
            mesh.stub().Generate(
                gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="p")),
                metadata=meta,
            )
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = mesh.details(error)
        assert details["retry_info"].retry_delay.ToMilliseconds() > 0
        assert details["quota_failure"].violations[0].subject.startswith("principal:")
        # Another principal is unaffected.
        await mesh.stub().Generate(
            gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="p")),
            metadata=mesh.auth(mesh.other_tenant_key),
        )
        await mesh.stub().Recall(gateway_pb2.RecallRequest(query="q"), metadata=meta)
        cheap = await mesh.failure(
            mesh.stub().Recall(gateway_pb2.RecallRequest(query="q"), metadata=meta)
        )
        assert cheap.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_chat_uses_history_and_memories_and_appends_once(mesh: Any) -> None:
    stub = mesh.stub()
    # A transparent client retry resends the request with the same request id.
    meta = (*mesh.auth(mesh.user_key), ("x-request-id", "turn-1"))
    await stub.Remember(
        gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text="the user likes tea")),
        metadata=meta,
    )
    request = gateway_pb2.ChatRequest(
        session_id="s1",
        message="do I like tea or not",
        recall=common_pb2.RecallOptions(k=3),
        system_prompt="be brief",
    )
    chunks = [c async for c in stub.Chat(request, metadata=meta)]
    assert chunks[0].start.memory_ids == ["m1"] and chunks[0].start.worker_id
    assert chunks[-1].done.session_version == 1 and chunks[-1].done.usage.completion_tokens == 3
    # The client retries the same turn: stored once, same version.
    again = [c async for c in stub.Chat(request, metadata=meta)]
    assert again[-1].done.session_version == 1 and again[-1].done.replayed
    # The replay reports the original turn's finish reason and usage.
    assert again[-1].done.finish_reason == chunks[-1].done.finish_reason
    assert again[-1].done.usage == chunks[-1].done.usage
    assert mesh.memory.appends == 1
    # The retry answers with the stored reply instead of generating another one.
    assert "".join(c.delta.text for c in again) == "".join(c.delta.text for c in chunks)
    calls = sum(w.calls for w in mesh.workers.values())
    assert calls == 1
    session = await stub.GetSession(gateway_pb2.GetSessionRequest(session_id="s1"), metadata=meta)
    roles = [m.role for m in session.messages]
    assert roles == [common_pb2.CHAT_ROLE_USER, common_pb2.CHAT_ROLE_ASSISTANT]
    # The memory went into the user's turn (the "context" layout); the session keeps the
    # message as the user wrote it.
    assert session.messages[1].content.startswith(
        "echo:Context:\n- the user likes tea\n\nUsing the context, answer: do I like tea"
    )
    assert session.messages[0].content == "do I like tea or not"
    # A new turn sees the history and appends at the next version.
    second = [
        c
        async for c in stub.Chat(
            gateway_pb2.ChatRequest(session_id="s1", message="and coffee?"),
            metadata=mesh.auth(mesh.user_key),
        )
    ]
    assert second[-1].done.session_version == 2


async def test_chat_retries_a_concurrent_append(mesh: Any) -> None:
    from llmesh.v1 import memory_pb2

    meta = mesh.auth(mesh.user_key)
    gate = asyncio.Event()
    for worker in mesh.workers.values():
        worker.gate = gate
    call = mesh.stub().Chat(
        gateway_pb2.ChatRequest(session_id="s2", message="hello"), metadata=meta
    )
    # The turn has read version 0; someone else appends before the reply is done.
    await await_until(
        lambda: _async(any(w.active for w in mesh.workers.values())), what="generation"
    )
    await mesh.memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            namespace="acme",
            session_id="s2",
            messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="other")],
            expected_version=0,
        ),
        None,
    )
    gate.set()
    chunks = [c async for c in call]
    assert chunks[-1].done.session_version == 2  # conflict at 0, retried at 1
    assert mesh.memory.sessions[("acme", "s2")].messages[0].content == "other"


async def test_tenants_are_isolated(mesh: Any) -> None:
    stub = mesh.stub()
    acme, globex = mesh.auth(mesh.user_key), mesh.auth(mesh.other_tenant_key)
    await stub.Remember(
        gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text="acme secret plans")),
        metadata=acme,
    )
    [
        c
        async for c in stub.Chat(
            gateway_pb2.ChatRequest(session_id="s", message="hi"), metadata=acme
        )
    ]
    found = await stub.Recall(gateway_pb2.RecallRequest(query="secret plans"), metadata=globex)
    assert list(found.hits) == []
    missing = await mesh.failure(
        stub.GetSession(gateway_pb2.GetSessionRequest(session_id="s"), metadata=globex)
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=globex)
    assert list(listed.sessions) == []
    mine = await stub.Recall(gateway_pb2.RecallRequest(query="secret plans"), metadata=acme)
    assert len(mine.hits) == 1


async def test_admin_workers_drain_and_models(mesh: Any) -> None:
    admin = mesh.admin()
    meta = mesh.auth(mesh.admin_key)
    listed = await admin.ListWorkers(gateway_pb2.ListWorkersRequest(), metadata=meta)
    assert {w.worker_id for w in listed.workers} == {"w0", "w1"}
    assert listed.staleness_seconds == 0
    drained = await admin.DrainWorker(
        gateway_pb2.DrainWorkerRequest(worker_id="w0", reason="maintenance"), metadata=meta
    )
    assert drained.worker.state == common_pb2.WORKER_STATE_DRAINING
    for _ in range(5):
        reply = await mesh.stub().Generate(
            gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(prompt="p")),
            metadata=mesh.auth(mesh.user_key),
        )
        assert reply.worker_id == "w1"
    missing = await mesh.failure(
        admin.DrainWorker(gateway_pb2.DrainWorkerRequest(worker_id="ghost"), metadata=meta)
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    loaded = await admin.LoadModel(
        gateway_pb2.LoadModelRequest(model="big", worker_id="w1"), metadata=meta
    )
    assert list(loaded.worker_ids) == ["w1"] and "big" in mesh.workers["w1"].loaded
    nope = await mesh.failure(
        admin.LoadModel(gateway_pb2.LoadModelRequest(model="zzz"), metadata=meta)
    )
    assert nope.code() == grpc.StatusCode.NOT_FOUND
    models = await mesh.stub().ListModels(
        gateway_pb2.ListModelsRequest(), metadata=mesh.auth(mesh.user_key)
    )
    names = {m.model.name: list(m.worker_ids) for m in models.models}
    assert names["tiny"] == ["w1"]  # w0 is draining
    # Each model carries the figures its workers reported; the embedding model is listed.
    by_name = {m.model.name: m.model for m in models.models}
    tiny = by_name["tiny"]
    assert (tiny.context_length, tiny.parameters, tiny.dtype) == (2048, 1_000_000, "float32")
    assert tiny.loaded and not tiny.embedding
    assert by_name["fake-embed"].embedding and names["fake-embed"] == ["w1"]
    assert not by_name["big"].loaded and by_name["big"].context_length == 4096


async def test_embed_routes_to_a_worker(mesh: Any) -> None:
    reply = await mesh.stub().Embed(
        gateway_pb2.EmbedRequest(texts=["a", "bcd"]), metadata=mesh.auth(mesh.user_key)
    )
    assert reply.dimensions == 2 and [e.values[1] for e in reply.embeddings] == [1.0, 3.0]


async def test_redis_backed_rate_limits_in_a_running_gateway(
    mesh_factory: Any, redis_server: Any
) -> None:
    limits = {
        "backend": "redis",
        "redis_url": redis_server.url,
        "requests_per_minute": 6,
        "burst_seconds": 10,  # one cheap call of burst
        "generations_per_minute": 6000,
    }
    async with mesh_factory(rate_limit=limits) as mesh:
        meta = mesh.auth(mesh.user_key)
        await mesh.stub().Recall(gateway_pb2.RecallRequest(query="q"), metadata=meta)
        error = await mesh.failure(
            mesh.stub().Recall(gateway_pb2.RecallRequest(query="q"), metadata=meta)
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert mesh.details(error)["retry_info"].retry_delay.ToMilliseconds() > 0


async def _async(value: bool) -> bool:
    return value


def test_prompt_layouts_place_memories_in_the_user_turn_or_a_system_message() -> None:
    from llmesh_gateway.chat import ChatPrompt, Context, build_messages

    hit = common_pb2.MemoryHit(memory=common_pb2.Memory(id="m1", text="My dog is called Rex."))
    history = [common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="hi")]
    context = Context(version=1, history=history, hits=[hit], degraded=False)
    request = gateway_pb2.ChatRequest(message="What is my dog's name?", system_prompt="be brief")
    system, old, user = build_messages(request, context, ChatPrompt(layout="context"))
    assert system.content == "be brief" and old.content == "hi"
    assert user.content == (
        "Context:\n- My dog is called Rex.\n\nUsing the context, answer: What is my dog's name?"
    )
    system, _, user = build_messages(request, context, ChatPrompt(layout="system"))
    assert (
        system.content == "be brief\n\nRelevant memories about the user:\n- My dog is called Rex."
    )
    assert user.content == "What is my dog's name?"
    # Without hits the message goes through as it is, in either layout.
    bare = Context(version=1, history=[], hits=[], degraded=False)
    (only,) = build_messages(gateway_pb2.ChatRequest(message="hello"), bare, ChatPrompt())
    assert only.content == "hello" and only.role == common_pb2.CHAT_ROLE_USER
