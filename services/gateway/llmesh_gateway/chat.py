"""``Chat``: one memory-augmented turn, stored exactly once.

Before anything is generated, three memory calls run in parallel, each with a bounded
share of the deadline (``ChatSettings``): the stored append for the turn's
idempotency key, the session history and the recall. A key already stored with
another request's fingerprint is INVALID_ARGUMENT; with this request's fingerprint
the stored turn is replayed (reply, finish reason, usage, version) and nothing is
generated. A recall that fails or runs out of its share leaves the memories out
(``recall_degraded``); history or the key lookup failing fails the turn fast with
UNAVAILABLE, since it could not be stored exactly once (so there is no "history
degraded": the contract has no such field).

The key is the client's ``idempotency_key`` or, without one, derived from the
request id (``x-request-id`` metadata, which a client's transparent retry reuses)
and the request's fingerprint: never from the text alone, so the same message later
in a session is a new turn. The reply streams through; the user and assistant
messages are appended with ``expected_version`` (retried on a concurrent append),
the key, the fingerprint and the finish reason and usage as annotations.

A call whose key is already being generated in this process waits for that turn,
then replays it (``chat_inflight``); across replicas the keyed append still stores
the turn once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format

from llmesh.kernel.context import current_request
from llmesh.kernel.errors import Aborted, InvalidArgument, LlmeshError, NotFound, Unavailable
from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import tracer
from llmesh.kernel.upstream import Share, unary
from llmesh.v1 import common_pb2, gateway_pb2, inference_pb2, memory_pb2, memory_pb2_grpc
from llmesh_gateway.chat_inflight import TurnsInFlight
from llmesh_gateway.defaults import DEFAULT_HISTORY
from llmesh_gateway.principal import Principal
from llmesh_gateway.router import Router

log = get_logger(__name__)
_tracer = tracer("llmesh.gateway.chat")
MAX_APPEND_ATTEMPTS = 5
# Codes of a memory call that mean "memory is down or too slow", not "bad request".
_MEMORY_DOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True)
class ChatBudget:
    """Time shares of a turn's memory calls (see ``ChatSettings``)."""

    context: Share = field(default_factory=lambda: Share(0.2, 1.5))
    """Each of GetAppend, history and recall (they run in parallel)."""
    append: Share = field(default_factory=lambda: Share(0.5, 3.0))
    """The append after generation, and remembering the message."""


def request_fingerprint(principal: Principal, request: gateway_pb2.ChatRequest) -> str:
    """What identifies a turn's request: a retry has the same, another message not."""
    parts = (
        principal.tenant,
        request.session_id,
        request.message,
        request.model,
        request.system_prompt,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def idempotency_key(request: gateway_pb2.ChatRequest, fingerprint: str) -> str:
    """The client's key; else one from the request id (reused by a client retry)."""
    if request.idempotency_key:
        return f"chat:{request.idempotency_key}"[:128]
    ctx = current_request()
    request_id = ctx.request_id if ctx is not None else ""
    digest = hashlib.sha256(f"{request_id}\0{fingerprint}".encode()).hexdigest()[:40]
    return f"chat:req:{digest}"


def turn_annotations(model: str, done: gateway_pb2.ChatDone) -> dict[str, str]:
    """What a replay needs besides the messages: the model, finish reason and usage."""
    return {
        "model": model,
        "finish_reason": common_pb2.FinishReason.Name(done.finish_reason),
        "usage": json_format.MessageToJson(done.usage, indent=None),
    }


def replayed_done(stored: memory_pb2.GetAppendResponse) -> gateway_pb2.ChatDone:
    """The ``done`` event of a stored turn, with its original finish reason and usage."""
    done = gateway_pb2.ChatDone(session_version=stored.version, replayed=True)
    reason = stored.annotations.entries.get("finish_reason", "")
    if reason in common_pb2.FinishReason.keys():  # noqa: SIM118 (an enum wrapper)
        done.finish_reason = common_pb2.FinishReason.Value(reason)
    usage = stored.annotations.entries.get("usage")
    if usage:
        json_format.Parse(usage, done.usage, ignore_unknown_fields=True)
    return done


@dataclass
class Context:
    """What the turn is built from."""

    version: int
    history: list[common_pb2.ChatMessage]
    hits: list[common_pb2.MemoryHit]
    degraded: bool
    degraded_reason: str = ""
    stored: memory_pb2.GetAppendResponse | None = None

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
                degraded_reason=reason,
                history_messages=len(self.history),
            )
        )


@dataclass(frozen=True)
class ChatPrompt:
    """How recalled memories enter the prompt (see ``ChatSettings``, docs/memory.md)."""

    layout: str = "context"
    """``context``: the memories go into the user's turn as "Context: - ... Using the
    context, answer: <message>" (SmolLM2-135M answers 88 % of bench/memory_use's dev
    questions from them); ``system``: a system message "Relevant memories about the
    user: - ..." (52 %: small models tend to ignore it)."""
    min_score: float = 0.0
    """Recall's threshold when the request leaves ``recall.min_score`` at 0."""


def build_messages(
    request: gateway_pb2.ChatRequest, context: Context, prompt: ChatPrompt | None = None
) -> list[common_pb2.ChatMessage]:
    """System prompt, history, then the user's message, with the memories per ``prompt``."""
    layout = (prompt or ChatPrompt()).layout
    lines = "\n".join(f"- {hit.memory.text}" for hit in context.hits)
    system_parts: list[str] = []
    if request.system_prompt:
        system_parts.append(request.system_prompt)
    if context.hits and layout == "system":
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
    content = request.message
    if context.hits and layout == "context":
        content = f"Context:\n{lines}\n\nUsing the context, answer: {request.message}"
    messages.append(common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=content))
    return messages


class ChatTurns:
    """Runs chat turns against the memory service and the router."""

    def __init__(
        self,
        memory: memory_pb2_grpc.MemoryServiceAsyncStub,
        router: Router,
        budget: ChatBudget | None = None,
        inflight: TurnsInFlight | None = None,
        prompt: ChatPrompt | None = None,
    ) -> None:
        self._memory = memory
        self._router = router
        self._budget = budget or ChatBudget()
        self._inflight = inflight or TurnsInFlight()
        self._prompt = prompt or ChatPrompt()

    async def _stored(self, namespace: str, key: str) -> memory_pb2.GetAppendResponse | None:
        try:
            response: memory_pb2.GetAppendResponse = await unary(
                self._memory.GetAppend,
                memory_pb2.GetAppendRequest(namespace=namespace, idempotency_key=key),
                what="looking up the turn's idempotency key",
                share=self._budget.context,
            )
        except NotFound:
            return None
        return response

    async def _history(
        self, namespace: str, session_id: str, limit: int
    ) -> tuple[int, list[common_pb2.ChatMessage]]:
        try:
            response = await unary(
                self._memory.GetSession,
                memory_pb2.MemoryServiceGetSessionRequest(
                    namespace=namespace, session_id=session_id, limit=max(1, limit)
                ),
                what="reading the session",
                share=self._budget.context,
            )
        except NotFound:
            return 0, []
        messages = list(response.messages)[-limit:] if limit > 0 else []
        return int(response.session.version), messages

    async def _recall(
        self, namespace: str, query: str, options: common_pb2.RecallOptions, *, disabled: bool
    ) -> tuple[list[common_pb2.MemoryHit], bool, str]:
        if disabled:  # recall is on by default; k = 0 means the default k, as in Recall
            return [], False, ""
        if options.min_score == 0 and self._prompt.min_score:  # 0: the gateway's default
            chosen = common_pb2.RecallOptions()
            chosen.CopyFrom(options)
            chosen.min_score = self._prompt.min_score
            options = chosen
        try:
            response = await unary(
                self._memory.Recall,
                memory_pb2.MemoryServiceRecallRequest(
                    namespace=namespace, query=query, options=options
                ),
                what="recalling memories",
                share=self._budget.context,
            )
        except LlmeshError as exc:
            log.warning("recall failed (%s); answering without memories", exc.code.name)
            return [], True, f"memory search failed ({exc.code.name}); no memories used"
        return list(response.hits), bool(response.degraded), str(response.degraded_reason)

    async def gather(
        self, principal: Principal, request: gateway_pb2.ChatRequest, key: str
    ) -> Context:
        """The stored turn for ``key``, history and memories, fetched in parallel."""
        limit = request.history_limit or DEFAULT_HISTORY
        with _tracer.start_as_current_span("chat.context"):
            stored, (version, history), (hits, degraded, reason) = await asyncio.gather(
                self._stored(principal.tenant, key),
                self._history(principal.tenant, request.session_id, limit),
                self._recall(
                    principal.tenant,
                    request.message,
                    request.recall,
                    disabled=request.disable_recall,
                ),
            )
        return Context(
            version=version,
            history=history,
            hits=hits,
            degraded=degraded,
            degraded_reason=reason,
            stored=stored,
        )

    async def append(
        self,
        *,
        principal: Principal,
        request: gateway_pb2.ChatRequest,
        reply: str,
        context: Context,
        key: str,
        fingerprint: str,
        notes: dict[str, str],
    ) -> memory_pb2.AppendMessagesResponse:
        """Append the turn once; retries a version conflict with the current version."""
        messages = [
            common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=request.message),
            common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_ASSISTANT, content=reply),
        ]
        version = context.version
        with _tracer.start_as_current_span("chat.append"):
            for _attempt in range(MAX_APPEND_ATTEMPTS):
                try:
                    response = await unary(
                        self._memory.AppendMessages,
                        memory_pb2.AppendMessagesRequest(
                            namespace=principal.tenant,
                            session_id=request.session_id,
                            messages=messages,
                            expected_version=version,
                            idempotency_key=key,
                            request_fingerprint=fingerprint,
                            annotations=common_pb2.Metadata(entries=notes),
                        ),
                        what="appending the turn",
                        share=self._budget.append,
                    )
                    appended: memory_pb2.AppendMessagesResponse = response
                    return appended
                except Aborted as exc:
                    current = exc.metadata.get("current_version")
                    if current is None or not current.lstrip("-").isdigit():
                        raise
                    version = int(current)
        raise Aborted(
            "the session kept changing; the turn could not be appended",
            reason="VERSION_CONFLICT",
            retry_after_s=0.1,
        )

    async def remember(self, principal: Principal, text: str, key: str) -> None:
        try:
            await unary(
                self._memory.Remember,
                memory_pb2.MemoryServiceRememberRequest(
                    namespace=principal.tenant,
                    memory=common_pb2.MemoryDraft(
                        text=text, idempotency_key=f"{key}:remember"[:128]
                    ),
                ),
                what="remembering the message",
                share=self._budget.append,
            )
        except LlmeshError as exc:
            log.warning("could not remember the chat message (%s)", exc.code.name)

    def _check_stored(self, stored: memory_pb2.GetAppendResponse, fingerprint: str) -> None:
        if stored.request_fingerprint != fingerprint:
            raise InvalidArgument(
                "idempotency_key was already used for a different chat message; "
                "send a new key for a new turn",
                reason="IDEMPOTENCY_KEY_REUSED",
            )

    async def _context(
        self, principal: Principal, request: gateway_pb2.ChatRequest, key: str
    ) -> Context:
        try:
            return await self.gather(principal, request, key)
        except LlmeshError as exc:
            if exc.code not in _MEMORY_DOWN:
                raise
            raise Unavailable(
                "the memory service did not answer within the turn's memory budget; "
                "nothing was generated or stored",
                reason="MEMORY_UNAVAILABLE",
                retry_after_s=1.0,
            ) from None

    async def run(
        self, principal: Principal, request: gateway_pb2.ChatRequest
    ) -> AsyncIterator[gateway_pb2.ChatResponse]:
        """Stream one turn: ``start``, ``delta``s, then ``done`` once the turn is stored.

        Holds the turn's key in this process while it runs: a call with the same key
        waits, then replays the stored turn instead of generating it again.
        """
        fingerprint = request_fingerprint(principal, request)
        key = idempotency_key(request, fingerprint)
        async with (
            self._inflight.claim(principal.tenant, key),
            contextlib.aclosing(self._turn(principal, request, fingerprint, key)) as events,
        ):
            async for event in events:
                yield event

    async def _turn(
        self,
        principal: Principal,
        request: gateway_pb2.ChatRequest,
        fingerprint: str,
        key: str,
    ) -> AsyncGenerator[gateway_pb2.ChatResponse, None]:
        context = await self._context(principal, request, key)
        stored = context.stored
        if stored is not None:
            self._check_stored(stored, fingerprint)
            reply = next(
                (m.content for m in stored.messages if m.role == common_pb2.CHAT_ROLE_ASSISTANT),
                "",
            )
            yield context.start(stored.annotations.entries.get("model", request.model), "")
            yield gateway_pb2.ChatResponse(delta=common_pb2.GenerationDelta(text=reply))
            yield gateway_pb2.ChatResponse(done=replayed_done(stored))
            return
        upstream = inference_pb2.InferenceServiceGenerateRequest(
            input=common_pb2.GenerationInput(
                model=request.model,
                messages=common_pb2.ChatMessages(
                    messages=build_messages(request, context, self._prompt)
                ),
                sampling=request.sampling,
            )
        )
        first = True
        model = request.model
        texts: list[str] = []
        final = gateway_pb2.ChatDone()
        async for chunk in self._router.stream(upstream, session_id=request.session_id):
            response = chunk.response
            if first:
                model = chunk.model or model
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
        appended = await self.append(
            principal=principal,
            request=request,
            reply=reply,
            context=context,
            key=key,
            fingerprint=fingerprint,
            notes=turn_annotations(model, final),
        )
        # A concurrent retry with the same key stored its turn first: report that one.
        final.session_version, final.replayed = appended.version, appended.replayed
        if request.remember_message:
            await self.remember(principal, request.message, key)
        yield gateway_pb2.ChatResponse(done=final)
