"""``Chat``: one memory-augmented turn.

History and recall run in parallel; the prompt is the system prompt (with the recalled
memories), the recent history and the new user message, rendered by the worker with
the model's chat template; the reply streams through; the user and assistant messages
are appended with ``expected_version`` (retried on a concurrent append) and an
idempotency key, so a retried turn is stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from llmesh.kernel.errors import Aborted
from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import tracer
from llmesh.v1 import common_pb2, gateway_pb2, inference_pb2, memory_pb2, memory_pb2_grpc
from llmesh_gateway.principal import Principal
from llmesh_gateway.router import Router
from llmesh_gateway.upstream import translate
from llmesh_gateway.defaults import DEFAULT_HISTORY

log = get_logger(__name__)
_tracer = tracer("llmesh.gateway.chat")
MAX_APPEND_ATTEMPTS = 5
# A version no session reaches: an append with it writes nothing unless it is a replay.
NEVER_VERSION = 2**62


def derive_idempotency_key(principal: Principal, request: gateway_pb2.ChatRequest) -> str:
    """The client's key, or one derived from what identifies the turn."""
    if request.idempotency_key:
        return f"chat:{request.idempotency_key}"[:128]
    parts = (
        principal.tenant,
        request.session_id,
        request.message,
        request.model,
        request.system_prompt,
    )
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]
    return f"chat:auto:{digest}"


@dataclass
class Context:
    """What the turn is built from."""

    version: int
    history: list[common_pb2.ChatMessage]
    hits: list[common_pb2.MemoryHit]
    degraded: bool
    history_degraded: bool = False
    degraded_reason: str = ""

    def start(self, model: str, worker_id: str) -> gateway_pb2.ChatResponse:
        """The turn's ``start`` event."""
        reason = self.degraded_reason
        if not reason and self.degraded:
            reason = "recall ran keyword-only or failed"
        return gateway_pb2.ChatResponse(
            start=gateway_pb2.ChatStart(
                model=model,
                worker_id=worker_id,
                memory_ids=[hit.memory.id for hit in self.hits],
                recall_degraded=self.degraded,
                history_degraded=self.history_degraded,
                degraded_reason=reason,
                history_messages=len(self.history),
            )
        )


def build_messages(
    request: gateway_pb2.ChatRequest, context: Context
) -> list[common_pb2.ChatMessage]:
    """System prompt + memories, history, then the user's message."""
    system_parts: list[str] = []
    if request.system_prompt:
        system_parts.append(request.system_prompt)
    if context.hits:
        lines = "\n".join(f"- {hit.memory.text}" for hit in context.hits)
        system_parts.append(f"Relevant memories about the user:\n{lines}")
    messages: list[common_pb2.ChatMessage] = []
    if system_parts:
        messages.append(
            common_pb2.ChatMessage(
                role=common_pb2.CHAT_ROLE_SYSTEM, content="\n\n".join(system_parts)
            )
        )
    for message in context.history:
        messages.append(common_pb2.ChatMessage(role=message.role, content=message.content))
    messages.append(common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=request.message))
    return messages


class ChatTurns:
    """Runs chat turns against the memory service and the router."""

    def __init__(self, memory: memory_pb2_grpc.MemoryServiceAsyncStub, router: Router) -> None:
        self._memory = memory
        self._router = router

    async def _history(
        self, namespace: str, session_id: str, limit: int
    ) -> tuple[int, list[common_pb2.ChatMessage]]:
        try:
            response = await self._memory.GetSession(
                memory_pb2.MemoryServiceGetSessionRequest(
                    namespace=namespace, session_id=session_id, limit=max(1, limit)
                )
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0, []
            raise translate(exc, what="reading the session") from None
        messages = list(response.messages)[-limit:] if limit > 0 else []
        return response.session.version, messages

    async def _recall(
        self, namespace: str, query: str, options: common_pb2.RecallOptions, *, disabled: bool
    ) -> tuple[list[common_pb2.MemoryHit], bool]:
        if disabled:  # recall is on by default; k = 0 means the default k, as in Recall
            return [], False
        try:
            response = await self._memory.Recall(
                memory_pb2.MemoryServiceRecallRequest(
                    namespace=namespace, query=query, options=options
                )
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("recall failed (%s); answering without memories", exc.code().name)
            return [], True
        return list(response.hits), response.degraded

    async def gather(self, principal: Principal, request: gateway_pb2.ChatRequest) -> Context:
        """History and memories, fetched in parallel."""
        limit = request.history_limit or DEFAULT_HISTORY
        with _tracer.start_as_current_span("chat.context"):
            (version, history), (hits, degraded) = await asyncio.gather(
                self._history(principal.tenant, request.session_id, limit),
                self._recall(
                    principal.tenant,
                    request.message,
                    request.recall,
                    disabled=request.disable_recall,
                ),
            )
        return Context(version=version, history=history, hits=hits, degraded=degraded)

    async def append(
        self,
        principal: Principal,
        request: gateway_pb2.ChatRequest,
        reply: str,
        expected_version: int,
        key: str,
    ) -> int:
        """Append the turn once; retries a version conflict with the current version."""
        messages = [
            common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=request.message),
            common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_ASSISTANT, content=reply),
        ]
        version = expected_version
        with _tracer.start_as_current_span("chat.append"):
            for _attempt in range(MAX_APPEND_ATTEMPTS):
                try:
                    response = await self._memory.AppendMessages(
                        memory_pb2.AppendMessagesRequest(
                            namespace=principal.tenant,
                            session_id=request.session_id,
                            messages=messages,
                            expected_version=version,
                            idempotency_key=key,
                        )
                    )
                    return int(response.version)
                except grpc.aio.AioRpcError as exc:
                    error = translate(exc, what="appending the turn")
                    if error.reason == "IDEMPOTENCY_KEY_REUSED":
                        raise Aborted(
                            "this turn's idempotency key was used by a concurrent request",
                            reason="IDEMPOTENCY_KEY_REUSED",
                            retry_after_s=0.5,
                        ) from None
                    if exc.code() != grpc.StatusCode.ABORTED:
                        raise error from None
                    current = error.metadata.get("current_version")
                    if current is None or not current.lstrip("-").isdigit():
                        raise error from None
                    version = int(current)
        raise Aborted(
            "the session kept changing; the turn could not be appended",
            reason="VERSION_CONFLICT",
            retry_after_s=0.1,
        )

    async def replayed_turn(
        self, principal: Principal, request: gateway_pb2.ChatRequest, context: Context, key: str
    ) -> tuple[int, str] | None:
        """``(version, stored reply)`` when this turn was stored already (a client retry).

        Only when the history holds this user message followed by a reply: the pair is
        offered with the turn's idempotency key and a version no session has, so the
        memory service either replays the original append or writes nothing.
        """
        history = context.history
        for i in range(len(history) - 2, -1, -1):
            user, reply = history[i], history[i + 1]
            if (
                user.role == common_pb2.CHAT_ROLE_USER
                and reply.role == common_pb2.CHAT_ROLE_ASSISTANT
                and user.content == request.message
            ):
                break
        else:
            return None
        try:
            response = await self._memory.AppendMessages(
                memory_pb2.AppendMessagesRequest(
                    namespace=principal.tenant,
                    session_id=request.session_id,
                    messages=[
                        common_pb2.ChatMessage(role=user.role, content=user.content),
                        common_pb2.ChatMessage(role=reply.role, content=reply.content),
                    ],
                    expected_version=NEVER_VERSION,
                    idempotency_key=key,
                )
            )
        except grpc.aio.AioRpcError:
            return None  # not a replay (version conflict or another turn's key)
        return (int(response.version), reply.content) if response.replayed else None

    async def remember(self, principal: Principal, text: str, key: str) -> None:
        try:
            await self._memory.Remember(
                memory_pb2.MemoryServiceRememberRequest(
                    namespace=principal.tenant, text=text, idempotency_key=f"{key}:remember"[:128]
                )
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("could not remember the chat message (%s)", exc.code().name)

    async def run(
        self, principal: Principal, request: gateway_pb2.ChatRequest
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        """Stream one turn; the last chunk carries usage and the new session version."""
        key = derive_idempotency_key(principal, request)
        context = await self.gather(principal, request)
        replay = await self.replayed_turn(principal, request, context, key)
        if replay is not None:
            version, stored = replay
            yield context.start(request.model, "")
            yield gateway_pb2.ChatResponse(delta=common_pb2.GenerationDelta(text=stored))
            yield gateway_pb2.ChatResponse(
                done=gateway_pb2.ChatDone(
                    finish_reason=common_pb2.FINISH_REASON_EOS,
                    session_version=version,
                    replayed=True,
                )
            )
            return
        upstream = inference_pb2.InferenceServiceGenerateRequest(
            model=request.model,
            messages=common_pb2.ChatMessages(messages=build_messages(request, context)),
            sampling=request.sampling,
        )
        first = True
        texts: list[str] = []
        final = gateway_pb2.ChatDone()
        async for chunk in self._router.stream(upstream, session_id=request.session_id):
            response = chunk.response
            if first:
                yield context.start(chunk.model, chunk.worker_id)
                first = False
            if response.WhichOneof("event") == "done":
                # Held back until the turn is stored.
                final.finish_reason = response.done.finish_reason
                final.usage.CopyFrom(response.done.usage)
                continue
            texts.append(response.delta.text)
            yield gateway_pb2.ChatResponse(delta=response.delta)
        reply = "".join(texts)
        final.session_version = await self.append(principal, request, reply, context.version, key)
        if request.remember_message:
            await self.remember(principal, request.message, key)
        yield gateway_pb2.ChatResponse(done=final)
