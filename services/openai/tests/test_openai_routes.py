"""Streams that fail after their first event: the 200 has gone out, so the failure is the
documented last event ``data: {"error": {...}}`` (no ``[DONE]``), which the SDKs raise."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import pytest

from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, gateway_pb2
from llmesh_openai.errors import OpenAIError
from llmesh_openai.gateway import GatewayClient
from llmesh_openai.responses import Completion
from llmesh_openai.routes import Routes

TIMEOUT = OpenAIError(504, "gateway deadline exceeded", type="timeout_error", code="x")


async def _failing(error: BaseException) -> AsyncGenerator[Any]:
    yield gateway_pb2.GenerateStreamResponse(start=gateway_pb2.GenerateStreamStart())
    yield gateway_pb2.GenerateStreamResponse(delta=common_pb2.GenerationDelta(text="Once"))
    raise error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TIMEOUT, TIMEOUT.body()),
        (
            RuntimeError("a bug"),
            {
                "error": {
                    "message": (
                        "internal error; quote the response's x-request-id when reporting it"
                    ),
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
    ],
)
async def test_a_failure_after_the_first_event_is_the_last_event(
    error: BaseException, expected: dict[str, Any]
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}")
    try:
        routes = Routes(GatewayClient(channel), max_body_bytes=1024)
        events = _failing(error)
        first = await events.__anext__()
        completion = Completion(model="m", chat=True)
        sent = [e["data"] async for e in routes._sse(events, first, completion, False)]
    finally:
        await channel.close()
    assert "[DONE]" not in sent
    *chunks, last = [json.loads(data) for data in sent]
    assert last == expected  # a bug too ends in the error shape, not a cut connection
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Once"},
    ]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
