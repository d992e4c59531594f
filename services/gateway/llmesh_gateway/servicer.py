"""``llmesh.v1.GatewayService``: admission, then routing or memory calls.

Field limits are checked by the kernel from the protos' buf.validate rules.

The memory namespace of every call is the principal's tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from llmesh.kernel.upstream import unary
from llmesh.v1 import (
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    memory_pb2,
    memory_pb2_grpc,
)
from llmesh_gateway.auth import current_principal
from llmesh_gateway.catalog import served_models
from llmesh_gateway.chat import ChatBudget, ChatPrompt, ChatTurns
from llmesh_gateway.chat_inflight import TurnsInFlight
from llmesh_gateway.defaults import max_tokens_of
from llmesh_gateway.ratelimit import RateLimiter
from llmesh_gateway.registry_cache import RegistryCache
from llmesh_gateway.router import Router

Context = grpc.aio.ServicerContext[Any, Any]


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """The public API (role user)."""

    def __init__(
        self,
        *,
        router: Router,
        memory: memory_pb2_grpc.MemoryServiceAsyncStub,
        limiter: RateLimiter,
        cache: RegistryCache,
        chat_budget: ChatBudget | None = None,
        chat_inflight: TurnsInFlight | None = None,
        chat_prompt: ChatPrompt | None = None,
    ) -> None:
        self._router = router
        self._memory = memory
        self._limiter = limiter
        self._cache = cache
        self._chat = ChatTurns(memory, router, chat_budget, chat_inflight, chat_prompt)

    @staticmethod
    def _upstream(
        request: gateway_pb2.GenerateRequest | gateway_pb2.GenerateStreamRequest,
    ) -> inference_pb2.InferenceServiceGenerateRequest:
        return inference_pb2.InferenceServiceGenerateRequest(input=request.input)

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: Context
    ) -> gateway_pb2.GenerateResponse:
        principal = current_principal()
        charged = await self._limiter.admit_generation(
            principal, max_tokens_of(request.input.sampling)
        )
        used = 0
        try:
            async with self._limiter.stream_slot(principal):
                result = await self._router.generate(
                    self._upstream(request), session_id=request.session_id
                )
            used = len(result.token_ids)
        finally:
            await self._limiter.settle_tokens(principal, charged, used)
        return gateway_pb2.GenerateResponse(
            text=result.text,
            token_ids=result.token_ids,
            finish_reason=result.finish_reason,  # type: ignore[arg-type]
            usage=result.usage,
            model=result.model,
            worker_id=result.worker_id,
        )

    async def GenerateStream(
        self, request: gateway_pb2.GenerateStreamRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.GenerateStreamResponse]:
        principal = current_principal()
        charged = await self._limiter.admit_generation(
            principal, max_tokens_of(request.input.sampling)
        )
        used = 0
        try:
            async with self._limiter.stream_slot(principal):
                first = True
                async for chunk in self._router.stream(
                    self._upstream(request), session_id=request.session_id
                ):
                    if first:
                        first = False
                        yield gateway_pb2.GenerateStreamResponse(
                            start=gateway_pb2.GenerateStreamStart(
                                model=chunk.model, worker_id=chunk.worker_id
                            )
                        )
                    response = chunk.response
                    if response.WhichOneof("event") == "done":
                        yield gateway_pb2.GenerateStreamResponse(done=response.done)
                    else:
                        used += len(response.delta.token_ids)
                        yield gateway_pb2.GenerateStreamResponse(delta=response.delta)
        finally:
            await self._limiter.settle_tokens(principal, charged, used)

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        principal = current_principal()
        charged = await self._limiter.admit_generation(principal, max_tokens_of(request.sampling))
        used = 0
        try:
            async with self._limiter.stream_slot(principal):
                async for out in self._chat.run(principal, request):
                    used += len(out.delta.token_ids)
                    yield out
        finally:
            await self._limiter.settle_tokens(principal, charged, used)

    async def Embed(
        self, request: gateway_pb2.EmbedRequest, context: Context
    ) -> gateway_pb2.EmbedResponse:
        _worker, response = await self._router.embed(
            inference_pb2.InferenceServiceEmbedRequest(texts=request.texts, model=request.model)
        )
        return gateway_pb2.EmbedResponse(
            embeddings=response.embeddings,
            dimensions=response.dimensions,
            model=response.model,
            prompt_tokens=response.prompt_tokens,
        )

    async def Remember(
        self, request: gateway_pb2.RememberRequest, context: Context
    ) -> gateway_pb2.RememberResponse:
        principal = current_principal()
        response = await unary(
            self._memory.Remember,
            memory_pb2.MemoryServiceRememberRequest(
                namespace=principal.tenant, memory=request.memory
            ),
            what="Remember",
        )
        return gateway_pb2.RememberResponse(
            id=response.id, duplicate=response.duplicate, embedded=response.embedded
        )

    async def Recall(
        self, request: gateway_pb2.RecallRequest, context: Context
    ) -> gateway_pb2.RecallResponse:
        principal = current_principal()
        response = await unary(
            self._memory.Recall,
            memory_pb2.MemoryServiceRecallRequest(
                namespace=principal.tenant, query=request.query, options=request.options
            ),
            what="Recall",
        )
        return gateway_pb2.RecallResponse(
            hits=response.hits,
            degraded=response.degraded,
            degraded_reason=response.degraded_reason,
        )

    async def Forget(
        self, request: gateway_pb2.ForgetRequest, context: Context
    ) -> gateway_pb2.ForgetResponse:
        principal = current_principal()
        response = await unary(
            self._memory.Forget,
            memory_pb2.MemoryServiceForgetRequest(
                namespace=principal.tenant,
                ids=request.ids,
                metadata_filter=request.metadata_filter,
            ),
            what="Forget",
        )
        return gateway_pb2.ForgetResponse(deleted=response.deleted)

    async def GetSession(
        self, request: gateway_pb2.GetSessionRequest, context: Context
    ) -> gateway_pb2.GetSessionResponse:
        principal = current_principal()
        response = await unary(
            self._memory.GetSession,
            memory_pb2.MemoryServiceGetSessionRequest(
                namespace=principal.tenant,
                session_id=request.session_id,
                limit=request.limit or 50,
            ),
            what="GetSession",
        )
        return gateway_pb2.GetSessionResponse(session=response.session, messages=response.messages)

    async def ListSessions(
        self, request: gateway_pb2.ListSessionsRequest, context: Context
    ) -> gateway_pb2.ListSessionsResponse:
        principal = current_principal()
        response = await unary(
            self._memory.ListSessions,
            memory_pb2.MemoryServiceListSessionsRequest(
                namespace=principal.tenant,
                page_size=request.page_size or 50,
                page_token=request.page_token,
            ),
            what="ListSessions",
        )
        return gateway_pb2.ListSessionsResponse(
            sessions=response.sessions, next_page_token=response.next_page_token
        )

    async def DeleteSession(
        self, request: gateway_pb2.DeleteSessionRequest, context: Context
    ) -> gateway_pb2.DeleteSessionResponse:
        principal = current_principal()
        response = await unary(
            self._memory.DeleteSession,
            memory_pb2.MemoryServiceDeleteSessionRequest(
                namespace=principal.tenant, session_id=request.session_id
            ),
            what="DeleteSession",
        )
        return gateway_pb2.DeleteSessionResponse(deleted_messages=response.deleted_messages)

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: Context
    ) -> gateway_pb2.ListModelsResponse:
        return gateway_pb2.ListModelsResponse(models=served_models(self._cache.list()))
