"""OpenAI bodies -> gateway requests: what the door checks itself, and what it passes on."""

from __future__ import annotations

from typing import Any

import pytest

from llmesh.v1 import common_pb2
from llmesh_openai.errors import OpenAIError
from llmesh_openai.requests import parse_chat, parse_completion, parse_embeddings

HELLO = [{"role": "user", "content": "hi"}]


def refused(parse: Any, body: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        parse(body)
    assert info.value.status == 400
    return info.value


def test_chat_maps_every_sampling_field() -> None:
    call = parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be kind"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                             "text": "b"}]},
                {"role": "assistant", "content": "c"},
            ],
            "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9,
            "seed": 3, "stop": "x", "stream": True, "stream_options": {"include_usage": True},
            "n": 1, "user": "ignored",
        }
    )  # fmt: skip
    assert call.generate is not None and call.stream and call.include_usage
    given = call.generate.input
    assert [m.role for m in given.messages.messages] == [
        common_pb2.CHAT_ROLE_SYSTEM, common_pb2.CHAT_ROLE_USER, common_pb2.CHAT_ROLE_ASSISTANT,
    ]  # fmt: skip
    assert given.messages.messages[1].content == "ab"
    s = given.sampling
    assert (s.max_tokens, s.seed, list(s.stop)) == (7, 3, ["x"])
    assert s.temperature == pytest.approx(0.5) and s.top_p == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO, "n": 2}, "n"),
        ({"messages": HELLO, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"messages": HELLO, "max_tokens": 2**40}, "max_tokens"),
        ({"messages": HELLO, "stop": [1]}, "stop"),
        ({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content"),
        ({"messages": HELLO, "llmesh": {"session_id": "s", "colour": 1}}, "llmesh.colour"),
        ({"messages": HELLO, "llmesh": {"session_id": "s", "recall": {"k": "x"}}},
         "llmesh.recall"),
        ({"messages": [{"role": "system", "content": "x"}], "llmesh": {"session_id": "s"}},
         "messages"),
        ({"messages": "hi"}, "messages"),
    ],
)  # fmt: skip
def test_chat_refusals_name_the_param(body: dict[str, Any], param: str) -> None:
    assert refused(parse_chat, body).param == param


def test_session_turns_a_request_into_a_chat_turn() -> None:
    call = parse_chat(
        {
            "model": "m",
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
                         {"role": "assistant", "content": "a1"}, {"role": "user",
                                                                  "content": "q2"}],
            "max_tokens": 4,
            "llmesh": {"session_id": "s-1", "recall": {"k": 2, "semantic_weight": 0.3},
                       "history_limit": 9, "idempotency_key": "k", "remember_message": True},
        }
    )  # fmt: skip
    chat = call.chat
    assert chat is not None and call.generate is None
    assert (chat.session_id, chat.message, chat.system_prompt) == ("s-1", "q2", "sys")
    assert (chat.recall.k, chat.history_limit, chat.idempotency_key) == (2, 9, "k")
    assert chat.remember_message and chat.sampling.max_tokens == 4


def test_completion_prompt_forms() -> None:
    assert parse_completion({"prompt": ["one"]}).generate.input.prompt == "one"  # type: ignore[union-attr]
    assert refused(parse_completion, {"prompt": ["a", "b"]}).param == "prompt"
    assert refused(parse_completion, {"prompt": [1, 2]}).param == "prompt"
    assert refused(parse_completion, {"prompt": "x", "echo": True}).param == "echo"


def test_completion_max_tokens_defaults_to_openais_16() -> None:
    for body in ({"prompt": "x"}, {"prompt": "x", "max_tokens": None}):
        call = parse_completion(body)
        assert call.generate is not None
        assert call.generate.input.sampling.max_tokens == 16
    sent = parse_completion({"prompt": "x", "max_tokens": 40}).generate
    assert sent is not None and sent.input.sampling.max_tokens == 40
    turn = parse_completion({"prompt": "x", "llmesh": {"session_id": "s"}}).chat
    assert turn is not None and turn.sampling.max_tokens == 16
    # Chat completions have no such default in OpenAI's API: left to the gateway's.
    chat = parse_chat({"messages": HELLO}).generate
    assert chat is not None and not chat.input.sampling.HasField("max_tokens")


def test_embeddings_input_forms() -> None:
    assert list(parse_embeddings({"input": "a"}).request.texts) == ["a"]
    call = parse_embeddings({"input": ["a", "b"], "encoding_format": "base64"})
    assert list(call.request.texts) == ["a", "b"] and call.base64
    assert refused(parse_embeddings, {"input": [[1, 2]]}).param == "input"
    assert refused(parse_embeddings, {"input": "a", "encoding_format": "hex"}).param == (
        "encoding_format"
    )
    assert refused(parse_embeddings, {"input": "a", "dimensions": 8}).param == "dimensions"
