"""Fakes that speak the inference and memory contracts for the gateway's service tests:
``FakeWorker`` (``mode`` injects failures) and ``FakeMemory`` (namespaced sessions with
versions and idempotency keys, keyword-matched memories)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from llmesh.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
)


class FakeWorker(inference_pb2_grpc.InferenceServiceServicer):
    """Speaks the inference contract; ``mode`` injects failures."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.mode = "ok"  # ok | fail_first | fail_after | hang | full
        self.tokens = 3
        self.calls = 0
        self.active: set[str] = set()
        self.cancelled = 0
        self.loaded = ["tiny"]
        self.gate: asyncio.Event | None = None  # when set, tokens wait for it

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        rid = dict(context.invocation_metadata()).get("x-request-id", "")
        self.active.add(rid)
        try:
            if self.mode == "fail_first":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "worker broken")
            if self.mode == "full":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
            yield inference_pb2.InferenceServiceGenerateResponse(
                start=inference_pb2.InferenceServiceGenerateStart(
                    model=request.input.model or "tiny"
                )
            )
            if self.gate is not None:
                await self.gate.wait()
            text = "echo:" + (request.input.prompt or request.input.messages.messages[-1].content)
            for i in range(self.tokens):
                if self.mode == "fail_after" and i == 1:
                    await context.abort(grpc.StatusCode.INTERNAL, "worker crashed")
                yield inference_pb2.InferenceServiceGenerateResponse(
                    delta=common_pb2.GenerationDelta(
                        text=text if i == 0 else f" t{i}", token_ids=[i + 1]
                    )
                )
                if self.mode == "hang":
                    await asyncio.Event().wait()
            yield inference_pb2.InferenceServiceGenerateResponse(
                done=common_pb2.GenerationDone(
                    finish_reason=common_pb2.FINISH_REASON_LENGTH,
                    usage=common_pb2.Usage(prompt_tokens=4, completion_tokens=self.tokens),
                )
            )
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active.discard(rid)

    async def ListModels(self, request: Any, context: Any) -> Any:
        return inference_pb2.InferenceServiceListModelsResponse(
            models=[common_pb2.ModelInfo(name=m, loaded=True) for m in self.loaded]
        )

    async def Stats(self, request: Any, context: Any) -> Any:
        return inference_pb2.StatsResponse(active_requests=len(self.active))

    async def Embed(self, request: Any, context: Any) -> Any:
        return inference_pb2.InferenceServiceEmbedResponse(
            embeddings=[
                inference_pb2.Embedding(values=[1.0, float(len(t))]) for t in request.texts
            ],
            dimensions=2,
            model="fake-embed",
        )

    async def LoadModel(self, request: Any, context: Any) -> Any:
        if request.model not in ("tiny", "big"):
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        if request.model not in self.loaded:
            self.loaded.append(request.model)
        return inference_pb2.InferenceServiceLoadModelResponse(
            model=common_pb2.ModelInfo(name=request.model, loaded=True)
        )

    async def UnloadModel(self, request: Any, context: Any) -> Any:
        if request.model not in self.loaded:
            await context.abort(grpc.StatusCode.NOT_FOUND, "not loaded")
        self.loaded.remove(request.model)
        return inference_pb2.InferenceServiceUnloadModelResponse()


@dataclass
class Session:
    version: int = 0
    messages: list[common_pb2.ChatMessage] = field(default_factory=list)


class FakeMemory(memory_pb2_grpc.MemoryServiceServicer):
    """Namespaced sessions (versions + idempotency keys) and keyword-matched memories."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], Session] = {}
        self.replies: dict[tuple[str, str], tuple[str, int]] = {}
        self.stored: dict[tuple[str, str], memory_pb2.GetAppendResponse] = {}
        self.hang: set[str] = set()  # methods that never answer (a hung memory service)
        self.memories: dict[str, tuple[str, str]] = {}
        self.appends = 0

    async def _maybe_hang(self, method: str) -> None:
        if method in self.hang:
            await asyncio.Event().wait()

    async def AppendMessages(self, request: Any, context: Any) -> Any:
        await self._maybe_hang("AppendMessages")
        key = (request.namespace, request.idempotency_key)
        fingerprint = request.request_fingerprint or repr(
            (request.session_id, [(m.role, m.content) for m in request.messages])
        )
        if request.idempotency_key and key in self.replies:
            stored, version = self.replies[key]
            if stored != fingerprint:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key reused")
            return memory_pb2.AppendMessagesResponse(
                version=version, replayed=True, annotations=self.stored[key].annotations
            )
        session = self.sessions.setdefault((request.namespace, request.session_id), Session())
        if request.expected_version != session.version:
            status = status_pb2.Status(code=10, message="version conflict")
            info = error_details_pb2.ErrorInfo(
                reason="VERSION_CONFLICT",
                domain="llmesh.dev",
                metadata={"current_version": str(session.version)},
            )
            status.details.add().Pack(info)
            await context.abort(
                grpc.StatusCode.ABORTED,
                "version conflict",
                trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
            )
        session.messages.extend(request.messages)
        session.version += 1
        self.appends += 1
        if request.idempotency_key:
            self.replies[key] = (fingerprint, session.version)
            self.stored[key] = memory_pb2.GetAppendResponse(
                session_id=request.session_id,
                request_fingerprint=request.request_fingerprint,
                version=session.version,
                messages=request.messages,
                annotations=request.annotations,
            )
        return memory_pb2.AppendMessagesResponse(
            version=session.version, annotations=request.annotations
        )

    async def GetAppend(self, request: Any, context: Any) -> Any:
        await self._maybe_hang("GetAppend")
        stored = self.stored.get((request.namespace, request.idempotency_key))
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no append with this key")
        return stored

    async def GetSession(self, request: Any, context: Any) -> Any:
        await self._maybe_hang("GetSession")
        session = self.sessions.get((request.namespace, request.session_id))
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
        assert session is not None
        return memory_pb2.MemoryServiceGetSessionResponse(
            session=common_pb2.SessionInfo(
                session_id=request.session_id,
                version=session.version,
                message_count=len(session.messages),
            ),
            messages=session.messages[-(request.limit or 50) :],
        )

    async def ListSessions(self, request: Any, context: Any) -> Any:
        return memory_pb2.MemoryServiceListSessionsResponse(
            sessions=[
                common_pb2.SessionInfo(session_id=sid, version=s.version)
                for (ns, sid), s in self.sessions.items()
                if ns == request.namespace
            ]
        )

    async def DeleteSession(self, request: Any, context: Any) -> Any:
        session = self.sessions.pop((request.namespace, request.session_id), None)
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
        assert session is not None
        return memory_pb2.MemoryServiceDeleteSessionResponse(deleted_messages=len(session.messages))

    async def Remember(self, request: Any, context: Any) -> Any:
        memory_id = f"m{len(self.memories) + 1}"
        self.memories[memory_id] = (request.namespace, request.memory.text)
        return memory_pb2.MemoryServiceRememberResponse(id=memory_id, embedded=True)

    async def Recall(self, request: Any, context: Any) -> Any:
        await self._maybe_hang("Recall")
        words = set(request.query.lower().split())
        hits = [
            common_pb2.MemoryHit(memory=common_pb2.Memory(id=mid, text=text), score=1.0)
            for mid, (ns, text) in self.memories.items()
            if ns == request.namespace and words & set(text.lower().split())
        ]
        return memory_pb2.MemoryServiceRecallResponse(hits=hits[: request.options.k or 5])

    async def Forget(self, request: Any, context: Any) -> Any:
        deleted = 0
        for memory_id in list(request.ids):
            if self.memories.get(memory_id, ("",))[0] == request.namespace:
                del self.memories[memory_id]
                deleted += 1
        return memory_pb2.MemoryServiceForgetResponse(deleted=deleted)
