"""The contract's buf.validate rules, enforced by the kernel, through the real gateway."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from llmesh.v1 import common_pb2, gateway_pb2

TEN_YEARS_S = 315_576_000


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _violations(mesh: Any, error: grpc.aio.AioRpcError) -> dict[str, str]:
    """field path -> rule id of every BadRequest violation."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert mesh.details(error)["error_info"].reason == "INVALID_FIELD"
    return {v.field: v.reason for v in mesh.details(error)["bad_request"].field_violations}


async def test_generate_names_each_bad_field_with_its_rule(mesh: Any) -> None:
    request = gateway_pb2.GenerateRequest(
        input=common_pb2.GenerationInput(
            model="../etc",
            prompt="",
            sampling=common_pb2.SamplingParams(
                temperature=3.0, top_p=0.0, top_k=1001, max_tokens=0, stop=["", "x" * 65]
            ),
        ),
        session_id="bad id!",
    )
    error = await _error(mesh.stub().Generate(request, metadata=mesh.auth(mesh.user_key)))
    assert _violations(mesh, error) == {
        "input.model": "string.pattern",
        "input.prompt": "string.min_bytes",
        "input.sampling.temperature": "float.gte_lte",
        "input.sampling.top_p": "float.gt_lte",
        "input.sampling.top_k": "int32.gte_lte",
        "input.sampling.max_tokens": "int32.gte_lte",
        "input.sampling.stop[0]": "string.min_bytes",
        "input.sampling.stop[1]": "string.max_bytes",
        "session_id": "string.pattern",
    }
    neither = await _error(
        mesh.stub().Generate(gateway_pb2.GenerateRequest(), metadata=mesh.auth(mesh.user_key))
    )
    assert _violations(mesh, neither) == {"input": "required"}
    empty = gateway_pb2.GenerateRequest(input=common_pb2.GenerationInput(model="tiny"))
    no_content = await _error(mesh.stub().Generate(empty, metadata=mesh.auth(mesh.user_key)))
    assert _violations(mesh, no_content) == {"input.content": "required"}
    assert all(w.calls == 0 for w in mesh.workers.values())


async def test_chat_and_messages_rules(mesh: Any) -> None:
    chat = gateway_pb2.ChatRequest(
        session_id="",
        message="   ",
        recall=common_pb2.RecallOptions(k=101, semantic_weight=1.5),
        history_limit=201,
        idempotency_key="k" * 129,
    )
    error = await _error(mesh.stub().Chat(chat, metadata=mesh.auth(mesh.user_key)).read())
    assert _violations(mesh, error) == {
        "session_id": "string.pattern",
        "message": "string.pattern",  # blank
        "recall.k": "int32.gte_lte",
        "recall.semantic_weight": "float.gte_lte",
        "history_limit": "int32.gte_lte",
        "idempotency_key": "string.max_len",
    }
    no_role = gateway_pb2.GenerateRequest(
        input=common_pb2.GenerationInput(
            messages=common_pb2.ChatMessages(messages=[common_pb2.ChatMessage(content="x")])
        )
    )
    error = await _error(mesh.stub().Generate(no_role, metadata=mesh.auth(mesh.user_key)))
    assert _violations(mesh, error) == {"input.messages.messages[0].role": "enum.not_in"}


async def test_out_of_range_ttls_are_refused_and_store_nothing(mesh: Any) -> None:
    huge = duration_pb2.Duration(seconds=10**12)
    remember = await _error(
        mesh.stub().Remember(
            gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text="a fact", ttl=huge)),
            metadata=mesh.auth(mesh.user_key),
        )
    )
    assert _violations(mesh, remember) == {"memory.ttl": "duration.gte_lte"}
    assert (
        f"{TEN_YEARS_S}s" in mesh.details(remember)["bad_request"].field_violations[0].description
    )
    assert not mesh.memory.memories  # nothing reached the memory service

    admin, meta = mesh.admin(), mesh.auth(mesh.admin_key)
    create = await _error(
        admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(
                name="k", role=gateway_pb2.ROLE_USER, tenant="acme", ttl=huge
            ),
            metadata=meta,
        )
    )
    assert _violations(mesh, create) == {"ttl": "duration.gte_lte"}
    # Nothing was stored: listing every key (revoked included) still works.
    listed = await admin.ListApiKeys(
        gateway_pb2.ListApiKeysRequest(include_revoked=True), metadata=meta
    )
    assert "k" not in [key.name for key in listed.keys]
    ok = await admin.CreateApiKey(
        gateway_pb2.CreateApiKeyRequest(
            name="k",
            role=gateway_pb2.ROLE_USER,
            tenant="acme",
            ttl=duration_pb2.Duration(seconds=TEN_YEARS_S),
        ),
        metadata=meta,
    )
    assert ok.info.HasField("expires_at")


async def test_nul_bytes_in_stored_text_are_refused(mesh: Any) -> None:
    meta = mesh.auth(mesh.user_key)
    error = await _error(
        mesh.stub().Remember(
            gateway_pb2.RememberRequest(
                memory=common_pb2.MemoryDraft(
                    text="before\x00after", metadata=common_pb2.Metadata(entries={"k": "v\x00"})
                )
            ),
            metadata=meta,
        )
    )
    assert _violations(mesh, error) == {
        "memory.text": "string.pattern",
        'memory.metadata.entries["k"]': "string.pattern",
    }
    chat = await _error(
        mesh.stub()
        .Chat(gateway_pb2.ChatRequest(session_id="s", message="hi\x00"), metadata=meta)
        .read()
    )
    assert _violations(mesh, chat) == {"message": "string.pattern"}
    assert not mesh.memory.memories


async def test_forget_with_100k_ids_is_refused_cheaply(mesh: Any) -> None:
    ids = [f"m{i}" for i in range(100_000)]
    started = time.monotonic()
    error = await _error(
        mesh.stub().Forget(gateway_pb2.ForgetRequest(ids=ids), metadata=mesh.auth(mesh.user_key))
    )
    assert _violations(mesh, error) == {"ids": "repeated.max_items"}
    assert time.monotonic() - started < 5
    bad_id = await _error(
        mesh.stub().Forget(
            gateway_pb2.ForgetRequest(ids=["ok", "not ok"]), metadata=mesh.auth(mesh.user_key)
        )
    )
    assert _violations(mesh, bad_id) == {"ids[1]": "string.pattern"}


async def test_malformed_bytes_are_refused_before_authentication(mesh: Any) -> None:
    call = mesh.channel.unary_unary(
        "/llmesh.v1.GatewayService/Generate",
        request_serializer=None,
        response_deserializer=None,
    )
    for payload in (bytes.fromhex("1201ff"), bytes.fromhex("9e")):  # bad UTF-8, cut tag
        error = await _error(call(payload, timeout=5))  # no credentials at all
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert mesh.details(error)["error_info"].reason == "MALFORMED_REQUEST"
    # The same call with a valid body still needs credentials.
    valid = gateway_pb2.GenerateRequest(
        input=common_pb2.GenerationInput(prompt="hi")
    ).SerializeToString()
    unauthenticated = await _error(call(valid, timeout=5))
    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED
