"""Field validation: every bad field named in one BadRequest."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from llmesh.kernel.errors import InvalidArgument
from llmesh.v1 import common_pb2, gateway_pb2
from llmesh_gateway import validation


def _fields(exc: pytest.ExceptionInfo[InvalidArgument]) -> set[str]:
    return {v.field for v in exc.value.field_violations}


def test_generate_names_each_bad_field() -> None:
    request = gateway_pb2.GenerateRequest(
        model="../etc",
        prompt="",
        sampling=common_pb2.SamplingParams(
            temperature=3.0, top_p=0.0, top_k=-1, max_tokens=0, stop=["", "x" * 65]
        ),
        session_id="bad id!",
    )
    with pytest.raises(InvalidArgument) as info:
        validation.check_generate(request)
    assert _fields(info) == {
        "model",
        "prompt",
        "sampling.temperature",
        "sampling.top_p",
        "sampling.top_k",
        "sampling.max_tokens",
        "sampling.stop[0]",
        "sampling.stop[1]",
        "session_id",
    }


def test_generate_prompt_xor_messages_and_message_roles() -> None:
    both = gateway_pb2.GenerateRequest(prompt="hi")
    both.messages.messages.add(role=common_pb2.CHAT_ROLE_SYSTEM, content="x")
    assert both.WhichOneof("input") == "messages"  # the contract's oneof keeps the last one
    validation.check_generate(both)
    bad_role = gateway_pb2.GenerateRequest(
        messages=common_pb2.ChatMessages(messages=[common_pb2.ChatMessage(content="x")])
    )
    with pytest.raises(InvalidArgument) as info:
        validation.check_generate(bad_role)
    assert _fields(info) == {"messages.messages[0].role"}
    validation.check_generate(gateway_pb2.GenerateRequest(prompt="ok"))
    too_long = gateway_pb2.GenerateRequest(prompt="é" * 40000)  # 80000 bytes
    with pytest.raises(InvalidArgument):
        validation.check_generate(too_long)


def test_chat_fields() -> None:
    request = gateway_pb2.ChatRequest(
        session_id="",
        message="",
        recall=common_pb2.RecallOptions(k=101, semantic_weight=1.5),
        history_limit=201,
        idempotency_key="k" * 129,
    )
    with pytest.raises(InvalidArgument) as info:
        validation.check_chat(request)
    assert _fields(info) == {
        "session_id",
        "message",
        "recall.k",
        "recall.semantic_weight",
        "history_limit",
        "idempotency_key",
    }
    validation.check_chat(gateway_pb2.ChatRequest(session_id="s-1:a.b", message="hello"))


def test_memory_and_admin_fields() -> None:
    with pytest.raises(InvalidArgument) as info:
        validation.check_remember(
            gateway_pb2.RememberRequest(
                text="", metadata={"": "v"}, ttl=duration_pb2.Duration(seconds=10**11)
            )
        )
    assert _fields(info) == {"text", "metadata[]", "ttl"}
    with pytest.raises(InvalidArgument) as info:
        validation.check_forget(gateway_pb2.ForgetRequest())
    assert _fields(info) == {"ids"}
    with pytest.raises(InvalidArgument) as info:
        validation.check_embed(gateway_pb2.EmbedRequest(texts=["", "ok"]))
    assert _fields(info) == {"texts[0]"}
    with pytest.raises(InvalidArgument) as info:
        validation.check_page(501, "")
    assert _fields(info) == {"page_size"}
    with pytest.raises(InvalidArgument):
        validation.check_key_id("NOT-HEX")
    with pytest.raises(InvalidArgument) as info:
        validation.check_worker_model("", "", model_required=True)
    assert _fields(info) == {"model"}
