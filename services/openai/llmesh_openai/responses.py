"""The gateway's generation events -> OpenAI response objects and stream chunks.

``GenerateStream`` and ``Chat`` send the same three events (``start``, ``delta``,
``done``); :class:`Completion` folds them into one OpenAI object (non-streaming) or
turns each into a chunk (``chat.completion.chunk`` / ``text_completion``).
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmesh.v1 import common_pb2, gateway_pb2

FINISH_REASONS = {
    common_pb2.FINISH_REASON_EOS: "stop",
    common_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_CONTEXT_FULL: "length",
}


def usage_of(usage: common_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


@dataclass
class Completion:
    """One chat (``chat=True``) or text completion being answered."""

    model: str
    chat: bool
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    extension: dict[str, Any] = field(default_factory=dict)

    @property
    def object_id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.id

    def on_event(self, event: Any) -> str | None:
        """Take one ``GenerateStreamResponse`` or ``ChatResponse``; returns the delta text."""
        kind = event.WhichOneof("event")
        if kind == "start":
            self.model = event.start.model or self.model
            if isinstance(event, gateway_pb2.ChatResponse):
                start = event.start
                self.extension.update(
                    memory_ids=list(start.memory_ids),
                    history_messages=start.history_messages,
                    recall_degraded=start.recall_degraded,
                )
            return None
        if kind == "delta":
            self.text.append(event.delta.text)
            return str(event.delta.text)
        if kind == "done":
            done = event.done
            self.finish_reason = FINISH_REASONS.get(done.finish_reason, "stop")
            self.usage = usage_of(done.usage)
            if isinstance(event, gateway_pb2.ChatResponse):
                self.extension.update(session_version=done.session_version, replayed=done.replayed)
        return None

    def _extension(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.extension:
            body["llmesh"] = dict(self.extension)
        return body

    def response(self) -> dict[str, Any]:
        """The whole non-streaming answer."""
        text = "".join(self.text)
        choice: dict[str, Any]
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
        return self._extension(
            {
                "id": self.object_id,
                "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": self.usage,
            }
        )

    def chunk(
        self,
        *,
        text: str | None = None,
        role: bool = False,
        finish: bool = False,
        include_usage: bool = False,
    ) -> dict[str, Any]:
        """One stream chunk: a delta (``text``), the first (``role``) or the last (``finish``)."""
        choice: dict[str, Any]
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
                delta["content"] = ""
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None}
        choice["finish_reason"] = self.finish_reason if finish else None
        body: dict[str, Any] = {
            "id": self.object_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        if finish:
            self._extension(body)
        return body

    def usage_chunk(self) -> dict[str, Any]:
        """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
        return {
            "id": self.object_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage,
        }


def embeddings_response(
    response: gateway_pb2.EmbedResponse, *, base64_encoded: bool, prompt_tokens: int
) -> dict[str, Any]:
    """``/v1/embeddings``' answer; base64 is little-endian float32, as OpenAI sends it."""
    data = []
    for index, embedding in enumerate(response.embeddings):
        values: Any
        if base64_encoded:
            raw = np.asarray(embedding.values, dtype="<f4").tobytes()
            values = base64.b64encode(raw).decode("ascii")
        else:
            values = list(embedding.values)
        data.append({"object": "embedding", "index": index, "embedding": values})
    return {
        "object": "list",
        "data": data,
        "model": response.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def models_response(response: gateway_pb2.ListModelsResponse, *, created: int) -> dict[str, Any]:
    """``/v1/models``: every model the mesh serves (with llmesh's figures as extras)."""
    return {
        "object": "list",
        "data": [
            {
                "id": served.model.name,
                "object": "model",
                "created": created,
                "owned_by": "llmesh",
                "llmesh": {
                    "loaded": served.model.loaded,
                    "embedding": served.model.embedding,
                    "context_length": served.model.context_length,
                    "workers": list(served.worker_ids),
                },
            }
            for served in response.models
        ],
    }
