"""The OpenAI endpoints: each parses its body, calls the gateway, answers OpenAI's shape.

Streams are server-sent events (``data: {chunk}`` ... ``data: [DONE]``); a failure
after the first event is sent as ``data: {"error": {...}}`` (what OpenAI's SDKs raise
mid-stream). A client that disconnects cancels the gateway call at once, streaming
(sse-starlette cancels the generator) or not (:func:`_until_disconnect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import meter
from llmesh.v1 import gateway_pb2
from llmesh_openai.errors import OpenAIError, ParamMap, bad_request
from llmesh_openai.gateway import GatewayClient
from llmesh_openai.requests import (
    EMBED_PARAMS,
    GenerationCall,
    parse_chat,
    parse_completion,
    parse_embeddings,
)
from llmesh_openai.responses import Completion, embeddings_response, models_response

T = TypeVar("T")
NO_PARAMS = ParamMap()
log = get_logger("llmesh.openai")


class Routes:
    """The handlers, bound to one gateway client."""

    def __init__(self, gateway: GatewayClient, *, max_body_bytes: int) -> None:
        self.gateway = gateway
        self.max_body_bytes = max_body_bytes
        self.started = int(time.time())
        m = meter("llmesh.openai")
        self._disconnects = m.create_counter(
            "openai.client.disconnects",
            description="Generations cancelled because the HTTP client went away",
        )

    # -- helpers ----------------------------------------------------------------

    async def _body(self, request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"the body is not valid JSON: {exc}", param=None) from None

    async def _until_disconnect(self, request: Request, work: Awaitable[T]) -> T:
        """Run ``work``; cancel it when the client disconnects first."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            self._disconnects.add(1)
            raise OpenAIError(
                499, "the client closed the request", type="cancelled", code="client_closed_request"
            )
        return task.result()

    # -- endpoints --------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, parse_chat(await self._body(request)), chat=True)

    async def completions(self, request: Request) -> Response:
        call = parse_completion(await self._body(request))
        return await self._generate(request, call, chat=False)

    async def embeddings(self, request: Request) -> Response:
        call = parse_embeddings(await self._body(request))
        response: gateway_pb2.EmbedResponse = await self._until_disconnect(
            request,
            self.gateway.unary(
                self.gateway.api.Embed,
                call.request,
                authorization=request.headers.get("authorization"),
                params=EMBED_PARAMS,
            ),
        )
        return JSONResponse(
            embeddings_response(
                response, base64_encoded=call.base64, prompt_tokens=response.prompt_tokens
            )
        )

    async def models(self, request: Request) -> Response:
        response = await self.gateway.unary(
            self.gateway.api.ListModels,
            gateway_pb2.ListModelsRequest(),
            authorization=request.headers.get("authorization"),
            params=NO_PARAMS,
        )
        return JSONResponse(models_response(response, created=self.started))

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        listing = models_response(
            await self.gateway.unary(
                self.gateway.api.ListModels,
                gateway_pb2.ListModelsRequest(),
                authorization=request.headers.get("authorization"),
                params=NO_PARAMS,
            ),
            created=self.started,
        )
        for entry in listing["data"]:
            if entry["id"] == name:
                return JSONResponse(entry)
        raise OpenAIError(
            404,
            f"the model {name!r} does not exist",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )

    async def workers(self, request: Request) -> Response:
        """``GET /v1/llmesh/workers``: the gateway's AdminService.ListWorkers (role admin)."""
        from google.protobuf import json_format

        response = await self.gateway.unary(
            self.gateway.admin.ListWorkers,
            gateway_pb2.ListWorkersRequest(),
            authorization=request.headers.get("authorization"),
            params=NO_PARAMS,
        )
        return JSONResponse(json_format.MessageToDict(response, preserving_proto_field_name=True))

    # -- generation ---------------------------------------------------------------

    def _events(self, request: Request, call: GenerationCall) -> AsyncGenerator[Any]:
        authorization = request.headers.get("authorization")
        if call.chat is not None:
            return self.gateway.stream(
                self.gateway.api.Chat, call.chat, authorization=authorization, params=call.params
            )
        return self.gateway.stream(
            self.gateway.api.GenerateStream,
            call.generate,
            authorization=authorization,
            params=call.params,
        )

    async def _generate(self, request: Request, call: GenerationCall, *, chat: bool) -> Response:
        completion = Completion(model=call.model, chat=chat)
        events = self._events(request, call)
        if not call.stream:

            async def collect() -> None:
                async for event in events:
                    completion.on_event(event)

            await self._until_disconnect(request, collect())
            return JSONResponse(completion.response())
        # The first event (or the error before it) decides the HTTP status.
        iterator = events
        try:
            first = await self._until_disconnect(request, _next(iterator))
        except BaseException:
            await iterator.aclose()
            raise
        return EventSourceResponse(
            self._sse(iterator, first, completion, call.include_usage),
            sep="\n",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            client_close_handler_callable=self._on_client_close,
        )

    async def _on_client_close(self, _message: Any) -> None:
        self._disconnects.add(1)

    async def _sse(
        self,
        events: AsyncGenerator[Any],
        first: Any,
        completion: Completion,
        include_usage: bool,
    ) -> AsyncIterator[dict[str, str]]:
        try:
            pending = [first] if first is not None else []
            sent_role = False
            while True:
                event = pending.pop() if pending else await _next(events)
                if event is None:
                    break
                text = completion.on_event(event)
                if not sent_role and completion.chat:
                    sent_role = True
                    yield _data(completion.chunk(role=True, include_usage=include_usage))
                if text:
                    yield _data(completion.chunk(text=text, include_usage=include_usage))
            if not sent_role and completion.chat:
                yield _data(completion.chunk(role=True, include_usage=include_usage))
            yield _data(completion.chunk(finish=True, include_usage=include_usage))
            if include_usage:
                yield _data(completion.usage_chunk())
            yield {"data": "[DONE]"}
        except OpenAIError as exc:  # after the 200 went out: an error event ends the stream
            log.warning(
                "stream ended by an error after its first event: %s %s (%s)",
                exc.status,
                exc.type,
                exc.code,
                extra={"code": str(exc.status)},
            )
            yield _data(exc.body())
        except Exception:  # a bug: still the documented error event, not a cut connection
            log.error("unhandled error in a stream after its first event", exc_info=True)
            yield _data(
                OpenAIError(
                    500,
                    "internal error; quote the response's x-request-id when reporting it",
                    type="server_error",
                ).body()
            )
        finally:
            await events.aclose()


async def _next(iterator: AsyncIterator[Any]) -> Any:
    """The next event, or None at the end."""
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (its body has been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _data(body: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(body, separators=(",", ":"), ensure_ascii=False)}


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"the request body is larger than {limit} bytes",
        type="invalid_request_error",
        code="request_too_large",
    )
