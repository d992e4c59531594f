"""OpenAI request bodies -> the gateway's gRPC requests.

Only what OpenAI's API has and the contract lacks is checked here (JSON types, ``n``,
roles, features llmesh does not offer); field limits (``temperature`` in [0, 2],
``max_tokens`` <= 8192, message sizes ...) are the contract's ``buf.validate`` rules,
enforced by the gateway and reported with ``param`` through :mod:`llmesh_openai.errors`.

The llmesh extension: a body field ``llmesh`` (``extra_body={"llmesh": {...}}`` in the
Python SDK) with ``session_id`` turns a chat or completion into a gateway ``Chat``
turn: the session's stored history and recalled memories are added to the prompt and
the turn is stored. See ``docs/openai.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from llmesh.v1 import common_pb2, gateway_pb2, memory_pb2
from llmesh_openai.errors import ParamMap, bad_request

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# OpenAI's default for /v1/completions when max_tokens is absent or null (chat
# completions leave it unset: the gateway's own default applies).
COMPLETION_DEFAULT_MAX_TOKENS = 16

GENERATE_PARAMS = ParamMap(
    (
        ("input.sampling.", ""),
        ("input.messages.messages", "messages"),
        ("input.messages", "messages"),
        ("input.prompt", "prompt"),
        ("input.model", "model"),
        ("input", "messages"),
        ("session_id", "llmesh.session_id"),
    )
)
CHAT_PARAMS = ParamMap(
    (
        ("sampling.", ""),
        ("message", "messages"),
        ("system_prompt", "messages"),
        ("model", "model"),
        ("session_id", "llmesh.session_id"),
        ("recall.", "llmesh.recall."),
        ("history_limit", "llmesh.history_limit"),
        ("idempotency_key", "llmesh.idempotency_key"),
    )
)
EMBED_PARAMS = ParamMap((("texts", "input"), ("model", "model")))

ROLES = {
    "system": common_pb2.CHAT_ROLE_SYSTEM,
    "developer": common_pb2.CHAT_ROLE_SYSTEM,
    "user": common_pb2.CHAT_ROLE_USER,
    "assistant": common_pb2.CHAT_ROLE_ASSISTANT,
}
# OpenAI features llmesh does not offer: refused when set to anything but "off".
UNSUPPORTED = {
    "tools": "tool calls",
    "functions": "function calls",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
    "logit_bias": "logit bias",
    "presence_penalty": "presence penalty",
    "frequency_penalty": "frequency penalty",
    "best_of": "best_of",
    "echo": "echo",
    "suffix": "suffix",
    "audio": "audio output",
}
_OFF: tuple[Any, ...] = (None, False, 0, 0.0, "", [], {})


@dataclass(frozen=True)
class GenerationCall:
    """A chat or completion request, as one of the gateway's two streaming calls."""

    model: str
    stream: bool
    include_usage: bool
    generate: gateway_pb2.GenerateStreamRequest | None = None
    chat: gateway_pb2.ChatRequest | None = None

    @property
    def params(self) -> ParamMap:
        return CHAT_PARAMS if self.chat is not None else GENERATE_PARAMS


@dataclass(frozen=True)
class EmbedCall:
    request: gateway_pb2.EmbedRequest
    base64: bool


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", param=None)
    return body


def _string(body: Mapping[str, Any], name: str, *, param: str | None = None) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string", param=param or name)
    return value


def _bool(body: Mapping[str, Any], name: str, *, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false", param=param or name)
    return value


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{name} must be a number", param=name)
    return float(value)


def _integer(
    body: Mapping[str, Any], name: str, *, limit: int, param: str | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer", param=param or name)
    if not -limit - 1 <= value <= limit:
        raise bad_request(f"{name} is out of range", param=param or name)
    return value


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request(
            "only n=1 is supported: send one request per completion",
            param="n",
            code="unsupported_value",
        )
    for name, what in UNSUPPORTED.items():
        if body.get(name) not in _OFF:
            raise bad_request(
                f"{what} ({name}) is not supported", param=name, code="unsupported_parameter"
            )
    tool_choice = body.get("tool_choice")
    if tool_choice not in (None, "none"):
        raise bad_request(
            "tool calls (tool_choice) are not supported",
            param="tool_choice",
            code="unsupported_parameter",
        )
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise bad_request(
            'only response_format {"type": "text"} is supported',
            param="response_format",
            code="unsupported_value",
        )


def _sampling(body: Mapping[str, Any]) -> common_pb2.SamplingParams:
    sampling = common_pb2.SamplingParams()
    temperature = _number(body, "temperature")
    if temperature is not None:
        sampling.temperature = temperature
    top_p = _number(body, "top_p")
    if top_p is not None:
        sampling.top_p = top_p
    # max_completion_tokens is the newer name; it wins when both are sent.
    for name in ("max_tokens", "max_completion_tokens"):
        value = _integer(body, name, limit=INT32_MAX)
        if value is not None:
            sampling.max_tokens = value
    seed = _integer(body, "seed", limit=INT64_MAX)
    if seed is not None:
        sampling.seed = seed
    stop = body.get("stop")
    if isinstance(stop, str):
        sampling.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        sampling.stop.extend(stop)
    elif stop is not None:
        raise bad_request("stop must be a string or a list of strings", param="stop")
    return sampling


def _stream_options(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", param="stream_options")
    if not stream:
        raise bad_request(
            "stream_options is only allowed with stream: true", param="stream_options"
        )
    return _bool(options, "include_usage", param="stream_options.include_usage")


def _content(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    param = f"messages[{index}].content"
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad_request(
                    "only text content parts are supported", param=param, code="unsupported_value"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request("a text part needs a string text", param=param)
            texts.append(text)
        return "".join(texts)
    raise bad_request("content must be a string or a list of text parts", param=param)


def _messages(body: Mapping[str, Any]) -> list[common_pb2.ChatMessage]:
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise bad_request("messages must be a list of {role, content} objects", param="messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise bad_request("each message must be an object", param=f"messages[{index}]")
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise bad_request(
                "role must be one of system, developer, user, assistant",
                param=f"messages[{index}].role",
                code="unsupported_value",
            )
        messages.append(common_pb2.ChatMessage(role=role, content=_content(message, index)))
    return messages


def _memory(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    extension = body.get("llmesh")
    if extension is None:
        return None
    if not isinstance(extension, dict):
        raise bad_request("llmesh must be an object", param="llmesh")
    return extension


def _chat_turn(
    extension: Mapping[str, Any],
    *,
    message: str,
    system: str,
    model: str,
    sampling: common_pb2.SamplingParams,
) -> gateway_pb2.ChatRequest:
    known = {
        "session_id",
        "recall",
        "history_limit",
        "idempotency_key",
        "remember_message",
        "disable_recall",
    }
    for name in extension:
        if name not in known:
            raise bad_request(f"unknown field llmesh.{name}", param=f"llmesh.{name}")
    request = gateway_pb2.ChatRequest(
        session_id=_string(extension, "session_id", param="llmesh.session_id"),
        message=message,
        model=model,
        sampling=sampling,
        system_prompt=system,
        idempotency_key=_string(extension, "idempotency_key", param="llmesh.idempotency_key"),
        remember_message=_bool(extension, "remember_message", param="llmesh.remember_message"),
        disable_recall=_bool(extension, "disable_recall", param="llmesh.disable_recall"),
    )
    limit = _integer(extension, "history_limit", limit=INT32_MAX, param="llmesh.history_limit")
    if limit is not None:
        request.history_limit = limit
    recall = extension.get("recall")
    if recall is not None:
        try:
            json_format.ParseDict(recall, request.recall)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise bad_request(f"llmesh.recall: {exc}", param="llmesh.recall") from None
    return request


def parse_chat(raw: Any) -> GenerationCall:
    """A ``/v1/chat/completions`` body."""
    body = _object(raw)
    _refuse_unsupported(body)
    model = _string(body, "model")
    stream = _bool(body, "stream")
    include_usage = _stream_options(body, stream)
    sampling = _sampling(body)
    messages = _messages(body)
    extension = _memory(body)
    if extension is not None and extension.get("session_id"):
        if not messages or messages[-1].role != common_pb2.CHAT_ROLE_USER:
            raise bad_request(
                "with llmesh.session_id the last message must be the user's turn", param="messages"
            )
        system = "\n\n".join(m.content for m in messages if m.role == common_pb2.CHAT_ROLE_SYSTEM)
        chat = _chat_turn(
            extension, message=messages[-1].content, system=system, model=model, sampling=sampling
        )
        return GenerationCall(model, stream, include_usage, chat=chat)
    generate = gateway_pb2.GenerateStreamRequest(
        input=common_pb2.GenerationInput(
            model=model,
            messages=common_pb2.ChatMessages(messages=messages),
            sampling=sampling,
        )
    )
    return GenerationCall(model, stream, include_usage, generate=generate)


def parse_completion(raw: Any) -> GenerationCall:
    """A ``/v1/completions`` body (one prompt string per request)."""
    body = _object(raw)
    _refuse_unsupported(body)
    model = _string(body, "model")
    stream = _bool(body, "stream")
    include_usage = _stream_options(body, stream)
    sampling = _sampling(body)
    if not sampling.HasField("max_tokens"):
        sampling.max_tokens = COMPLETION_DEFAULT_MAX_TOKENS
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request(
            "prompt must be one string (token arrays and batches are not "
            "supported: send one request per prompt)",
            param="prompt",
            code="unsupported_value",
        )
    extension = _memory(body)
    if extension is not None and extension.get("session_id"):
        chat = _chat_turn(extension, message=prompt, system="", model=model, sampling=sampling)
        return GenerationCall(model, stream, include_usage, chat=chat)
    generate = gateway_pb2.GenerateStreamRequest(
        input=common_pb2.GenerationInput(model=model, prompt=prompt, sampling=sampling)
    )
    return GenerationCall(model, stream, include_usage, generate=generate)


def parse_embeddings(raw: Any) -> EmbedCall:
    """A ``/v1/embeddings`` body: ``input`` a string or a list of strings."""
    body = _object(raw)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise bad_request(
            "input must be a string or a list of strings (token arrays are not supported)",
            param="input",
            code="unsupported_value",
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request("encoding_format must be float or base64", param="encoding_format")
    if body.get("dimensions") is not None:
        raise bad_request(
            "dimensions is not supported: the model's own size is returned",
            param="dimensions",
            code="unsupported_parameter",
        )
    request = gateway_pb2.EmbedRequest(texts=texts, model=_string(body, "model"))
    return EmbedCall(request=request, base64=encoding == "base64")


_ = memory_pb2  # RecallOptions lives in memory.proto (parsed into ChatRequest.recall)
