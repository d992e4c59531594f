"""gRPC transport of ``llmesh.v1.MemoryService``: message conversion.

Field limits are the contract's (``buf.validate`` rules, checked by the kernel before
a request gets here); the engine does the work. Only checks the rules cannot state
remain: Forget needs ids or a filter, Recall's weights cannot both be 0.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from google.protobuf import timestamp_pb2

from llmesh.kernel.durations import seconds_of
from llmesh.kernel.errors import invalid
from llmesh.kernel.timestamps import to_timestamp
from llmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc

from .engine import MemoryEngine, RecallParams
from .scoring import DEFAULT_KEYWORD_WEIGHT, DEFAULT_SEMANTIC_WEIGHT, Fusion
from .store.base import MemoryRecord, MessageIn, SessionRecord, StoredMessage

_MODES = {
    common_pb2.FUSION_MODE_UNSPECIFIED: Fusion.WEIGHTED,
    common_pb2.FUSION_MODE_WEIGHTED: Fusion.WEIGHTED,
    common_pb2.FUSION_MODE_RRF: Fusion.RRF,
    common_pb2.FUSION_MODE_SEMANTIC: Fusion.SEMANTIC,
    common_pb2.FUSION_MODE_KEYWORD: Fusion.KEYWORD,
}


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    return to_timestamp(seconds)  # clamped: a bad stored time never fails a reply


def session_info(record: SessionRecord) -> common_pb2.SessionInfo:
    """A store session as ``llmesh.v1.SessionInfo``."""
    return common_pb2.SessionInfo(
        session_id=record.session_id,
        version=record.version,
        message_count=record.message_count,
        created_at=_timestamp(record.created_at),
        updated_at=_timestamp(record.updated_at),
        expires_at=_timestamp(record.expires_at),
    )


def chat_message(message: StoredMessage) -> common_pb2.ChatMessage:
    """A stored message as ``llmesh.v1.ChatMessage``."""
    return common_pb2.ChatMessage(
        role=message.role,  # type: ignore[arg-type]
        content=message.content,
        created_at=_timestamp(message.created_at),
    )


def memory_message(record: MemoryRecord) -> common_pb2.Memory:
    """A stored memory as ``llmesh.v1.Memory``."""
    return common_pb2.Memory(
        id=record.id,
        text=record.text,
        metadata=common_pb2.Metadata(entries=record.metadata),
        created_at=_timestamp(record.created_at),
        expires_at=_timestamp(record.expires_at),
        embedded=record.embedded,
    )


def encode_page_token(updated_at: float, session_id: str) -> str:
    """An opaque keyset token for the page after ``(updated_at, session_id)``."""
    return base64.urlsafe_b64encode(json.dumps([updated_at, session_id]).encode()).decode()


def decode_page_token(token: str) -> tuple[float, str] | None:
    """The keyset of a page token; ``InvalidArgument`` when it is not one of ours."""
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
        if (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], int | float)
            and isinstance(value[1], str)
        ):
            return float(value[0]), value[1]
    except (binascii.Error, ValueError, UnicodeDecodeError):
        pass
    raise invalid("page_token", "not a token returned by ListSessions")


def recall_params(query: str, options: common_pb2.RecallOptions) -> RecallParams:
    """Search parameters from a query and ``RecallOptions`` (server defaults filled in)."""
    semantic = (
        options.semantic_weight if options.HasField("semantic_weight") else DEFAULT_SEMANTIC_WEIGHT
    )
    keyword = (
        options.keyword_weight if options.HasField("keyword_weight") else DEFAULT_KEYWORD_WEIGHT
    )
    if semantic == 0 and keyword == 0:
        raise invalid("options.semantic_weight", "semantic and keyword weights cannot both be 0")
    return RecallParams(
        query=query,
        k=options.k or 5,
        min_score=options.min_score,
        mode=_MODES.get(options.mode, Fusion.WEIGHTED),
        semantic_weight=semantic,
        keyword_weight=keyword,
        metadata_filter=dict(options.metadata_filter.entries),
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """``llmesh.v1.MemoryService`` over a :class:`MemoryEngine`."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.engine = engine

    async def AppendMessages(
        self, request: memory_pb2.AppendMessagesRequest, context: Any
    ) -> memory_pb2.AppendMessagesResponse:
        result = await self.engine.append(
            request.namespace,
            request.session_id,
            [MessageIn(int(m.role), m.content) for m in request.messages],
            expected_version=request.expected_version,
            idempotency_key=request.idempotency_key,
            ttl_s=seconds_of(request.ttl),
            request_fingerprint=request.request_fingerprint,
            annotations=request.annotations.entries,
        )
        return memory_pb2.AppendMessagesResponse(
            version=result.version,
            replayed=result.replayed,
            annotations=common_pb2.Metadata(entries=result.annotations),
        )

    async def GetAppend(
        self, request: memory_pb2.GetAppendRequest, context: Any
    ) -> memory_pb2.GetAppendResponse:
        stored = await self.engine.get_append(request.namespace, request.idempotency_key)
        return memory_pb2.GetAppendResponse(
            session_id=stored.session_id,
            request_fingerprint=stored.request_fingerprint,
            version=stored.version,
            messages=[
                common_pb2.ChatMessage(role=m.role, content=m.content)  # type: ignore[arg-type]
                for m in stored.messages
            ],
            annotations=common_pb2.Metadata(entries=stored.annotations),
        )

    async def GetSession(
        self, request: memory_pb2.MemoryServiceGetSessionRequest, context: Any
    ) -> memory_pb2.MemoryServiceGetSessionResponse:
        limit = request.limit or 50
        record, messages = await self.engine.get_session(
            request.namespace, request.session_id, limit=limit
        )
        return memory_pb2.MemoryServiceGetSessionResponse(
            session=session_info(record), messages=[chat_message(m) for m in messages]
        )

    async def ListSessions(
        self, request: memory_pb2.MemoryServiceListSessionsRequest, context: Any
    ) -> memory_pb2.MemoryServiceListSessionsResponse:
        size = request.page_size or 50
        after = decode_page_token(request.page_token)
        records = await self.engine.list_sessions(
            request.namespace, page_size=size + 1, after=after
        )
        token = ""
        if len(records) > size:
            records = records[:size]
            token = encode_page_token(records[-1].updated_at, records[-1].session_id)
        return memory_pb2.MemoryServiceListSessionsResponse(
            sessions=[session_info(r) for r in records], next_page_token=token
        )

    async def DeleteSession(
        self, request: memory_pb2.MemoryServiceDeleteSessionRequest, context: Any
    ) -> memory_pb2.MemoryServiceDeleteSessionResponse:
        deleted = await self.engine.delete_session(request.namespace, request.session_id)
        return memory_pb2.MemoryServiceDeleteSessionResponse(deleted_messages=deleted)

    async def Remember(
        self, request: memory_pb2.MemoryServiceRememberRequest, context: Any
    ) -> memory_pb2.MemoryServiceRememberResponse:
        memory = request.memory
        result = await self.engine.remember(
            request.namespace,
            memory.text,
            metadata=dict(memory.metadata.entries),
            ttl_s=seconds_of(memory.ttl),
            idempotency_key=memory.idempotency_key,
        )
        return memory_pb2.MemoryServiceRememberResponse(
            id=result.id, duplicate=result.duplicate, embedded=result.embedded
        )

    async def Recall(
        self, request: memory_pb2.MemoryServiceRecallRequest, context: Any
    ) -> memory_pb2.MemoryServiceRecallResponse:
        params = recall_params(request.query, request.options)
        outcome = await self.engine.recall(request.namespace, params)
        return memory_pb2.MemoryServiceRecallResponse(
            hits=[
                common_pb2.MemoryHit(
                    memory=memory_message(h.memory),
                    score=h.score,
                    semantic_score=h.semantic,
                    keyword_score=h.keyword,
                )
                for h in outcome.hits
            ],
            degraded=outcome.degraded,
            degraded_reason=outcome.degraded_reason,
        )

    async def Forget(
        self, request: memory_pb2.MemoryServiceForgetRequest, context: Any
    ) -> memory_pb2.MemoryServiceForgetResponse:
        if not request.ids and not request.metadata_filter.entries:
            raise invalid("ids", "give ids, a metadata_filter, or both")
        before = (
            request.created_before.ToNanoseconds() / 1e9
            if request.HasField("created_before")
            else None
        )
        deleted = await self.engine.forget(
            request.namespace,
            ids=list(request.ids),
            metadata_filter=dict(request.metadata_filter.entries),
            created_before=before,
        )
        return memory_pb2.MemoryServiceForgetResponse(deleted=deleted)
