"""The OpenAI door's request parsing: the type checks and refusals the e2e tests rarely send."""

from __future__ import annotations

from typing import Any

import pytest

from llmesh.v1 import common_pb2
from llmesh_openai.errors import OpenAIError
from llmesh_openai.requests import (
    CHAT_PARAMS,
    GENERATE_PARAMS,
    parse_chat,
    parse_completion,
    parse_embeddings,
)

HELLO = [{"role": "user", "content": "hi"}]


def refused(parse: Any, body: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        parse(body)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize("parse", [parse_chat, parse_completion, parse_embeddings])
@pytest.mark.parametrize("body", [[], "text", None, 3])
def test_a_body_that_is_not_an_object(parse: Any, body: Any) -> None:
    error = refused(parse, body)
    assert error.param is None
    assert "JSON object" in error.message


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"messages": HELLO, "model": 5}, "model", "must be a string"),
        ({"messages": HELLO, "stream": "yes"}, "stream", "true or false"),
        ({"messages": HELLO, "temperature": True}, "temperature", "must be a number"),
        ({"messages": HELLO, "seed": 1.5}, "seed", "must be an integer"),
        ({"messages": HELLO, "max_tokens": True}, "max_tokens", "must be an integer"),
        ({"messages": HELLO, "max_tokens": -(2**31) - 2}, "max_tokens", "out of range"),
        ({"messages": HELLO, "tool_choice": "auto"}, "tool_choice", "not supported"),
        ({"messages": HELLO, "response_format": {"type": "json_object"}}, "response_format",
         "text"),
        ({"messages": HELLO, "stream": True, "stream_options": True}, "stream_options",
         "must be an object"),
        ({"messages": HELLO, "stream": True, "stream_options": {"include_usage": "y"}},
         "stream_options.include_usage", "true or false"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
         "messages[0].content", "string text"),
        ({"messages": [{"role": "user", "content": [["text"]]}]}, "messages[0].content",
         "only text"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content",
         "string or a list"),
        ({"messages": ["hi"]}, "messages[0]", "must be an object"),
        ({"messages": HELLO, "llmesh": "s-1"}, "llmesh", "must be an object"),
        ({"messages": HELLO, "llmesh": {"session_id": 1}}, "llmesh.session_id",
         "must be a string"),
        ({"messages": HELLO, "llmesh": {"session_id": "s", "history_limit": "9"}},
         "llmesh.history_limit", "must be an integer"),
        ({"messages": HELLO, "llmesh": {"session_id": "s", "disable_recall": 1}},
         "llmesh.disable_recall", "true or false"),
        ({"messages": HELLO, "llmesh": {"session_id": "s", "recall": 3}}, "llmesh.recall",
         "llmesh.recall"),
        ({"messages": [], "llmesh": {"session_id": "s"}}, "messages", "user's turn"),
        ({"messages": HELLO, "logprobs": True}, "logprobs", "log probabilities"),
    ],
)  # fmt: skip
def test_chat_type_checks_name_the_param(body: dict[str, Any], param: str, says: str) -> None:
    error = refused(parse_chat, body)
    assert error.param == param
    assert says in error.message


@pytest.mark.parametrize(
    "off", [{"tools": []}, {"logprobs": False}, {"presence_penalty": 0}, {"frequency_penalty": 0.0},
            {"suffix": ""}, {"logit_bias": {}}, {"tool_choice": "none"}, {"n": None},
            {"response_format": {"type": "text"}}, {"stop": None}]
)  # fmt: skip
def test_unsupported_features_set_to_off_are_accepted(off: dict[str, Any]) -> None:
    call = parse_chat({"messages": HELLO} | off)
    assert call.generate is not None


def test_plain_chat_without_options() -> None:
    call = parse_chat({"messages": [{"role": "user"}, {"role": "assistant", "content": None}]})
    assert call.generate is not None and call.chat is None
    assert (call.model, call.stream, call.include_usage) == ("", False, False)
    assert [m.content for m in call.generate.input.messages.messages] == ["", ""]
    sampling = call.generate.input.sampling
    assert not sampling.HasField("temperature") and not sampling.HasField("top_p")
    assert not sampling.HasField("seed") and list(sampling.stop) == []
    assert call.params is GENERATE_PARAMS


def test_stop_list_and_include_usage_false() -> None:
    call = parse_chat(
        {
            "messages": HELLO,
            "stop": ["a", "b"],
            "stream": True,
            "stream_options": {},
            "max_tokens": 2**31 - 1,
            "seed": -(2**63),
        }
    )
    assert call.generate is not None
    sampling = call.generate.input.sampling
    assert list(sampling.stop) == ["a", "b"]
    assert sampling.max_tokens == 2**31 - 1 and sampling.seed == -(2**63)
    assert call.stream and not call.include_usage


def test_session_chat_params_and_defaults() -> None:
    call = parse_chat({"messages": HELLO, "llmesh": {"session_id": "s", "disable_recall": True}})
    chat = call.chat
    assert chat is not None
    assert call.params is CHAT_PARAMS
    assert chat.disable_recall and not chat.remember_message
    assert chat.system_prompt == "" and chat.history_limit == 0
    assert not chat.HasField("recall")


def test_empty_session_id_stays_a_plain_generation() -> None:
    call = parse_chat({"messages": HELLO, "llmesh": {"session_id": ""}})
    assert call.generate is not None and call.chat is None
    call = parse_completion({"prompt": "p", "llmesh": {}})
    assert call.generate is not None and call.chat is None


def test_completion_session_turn_and_refusals() -> None:
    call = parse_completion(
        {"prompt": "p", "stream": True, "llmesh": {"session_id": "s", "history_limit": 0}}
    )
    assert call.chat is not None and call.stream
    assert (call.chat.message, call.chat.system_prompt, call.chat.history_limit) == ("p", "", 0)
    assert refused(parse_completion, {}).param == "prompt"
    assert refused(parse_completion, {"prompt": "p", "n": 3}).param == "n"
    assert refused(parse_completion, {"prompt": "p", "stream_options": {}}).param == (
        "stream_options"
    )
    assert refused(parse_completion, {"prompt": "p", "llmesh": []}).param == "llmesh"


def test_embeddings_defaults_and_refusals() -> None:
    call = parse_embeddings({"input": [], "model": "e", "encoding_format": None})
    assert list(call.request.texts) == [] and call.request.model == "e" and not call.base64
    assert not parse_embeddings({"input": "a", "encoding_format": "float"}).base64
    assert refused(parse_embeddings, {}).param == "input"
    assert refused(parse_embeddings, {"input": "a", "model": 1}).param == "model"


def test_roles_map_to_the_contract() -> None:
    call = parse_chat(
        {"messages": [{"role": r, "content": r} for r in ("system", "user", "assistant")]}
    )
    assert call.generate is not None
    roles = [m.role for m in call.generate.input.messages.messages]
    assert roles == [
        common_pb2.CHAT_ROLE_SYSTEM,
        common_pb2.CHAT_ROLE_USER,
        common_pb2.CHAT_ROLE_ASSISTANT,
    ]
