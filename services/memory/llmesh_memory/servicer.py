"""gRPC transport of ``llmesh.v1.MemoryService``: validation and message conversion.

Every bad field is reported at once (``BadRequest``); the engine does the work.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from llmesh.kernel.durations import MAX_TTL_S, seconds_of
from llmesh.kernel.errors import FieldViolation, InvalidArgument, invalid
from llmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc

from .engine import MemoryEngine, RecallParams
from .scoring import DEFAULT_KEYWORD_WEIGHT, DEFAULT_SEMANTIC_WEIGHT, Fusion
from .store.base import MemoryRecord, MessageIn, SessionRecord, StoredMessage

SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_NAMESPACE = 128
MAX_KEY = 128
MAX_ANNOTATIONS = 16
MAX_MESSAGES = 64
MAX_TEXT_BYTES = 16384
MAX_QUERY_BYTES = 4096
MAX_METADATA = 32
MAX_META_KEY = 64
MAX_META_VALUE_BYTES = 1024

_MODES = {
    common_pb2.FUSION_MODE_UNSPECIFIED: Fusion.WEIGHTED,
    common_pb2.FUSION_MODE_WEIGHTED: Fusion.WEIGHTED,
    common_pb2.FUSION_MODE_RRF: Fusion.RRF,
    common_pb2.FUSION_MODE_SEMANTIC: Fusion.SEMANTIC,
    common_pb2.FUSION_MODE_KEYWORD: Fusion.KEYWORD,
}


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items)
            raise InvalidArgument(summary, field_violations=self.items)


def _namespace(v: _Violations, namespace: str) -> None:
    if not namespace or len(namespace) > MAX_NAMESPACE:
        v.add("namespace", f"must be 1..{MAX_NAMESPACE} characters")


def _session_id(v: _Violations, session_id: str) -> None:
    if not SESSION_ID.match(session_id):
        v.add("session_id", "must be 1..128 characters of [A-Za-z0-9._:-]")


def _metadata(v: _Violations, field: str, metadata: Mapping[str, str]) -> None:
    if len(metadata) > MAX_METADATA:
        v.add(field, f"at most {MAX_METADATA} pairs")
    for key, value in metadata.items():
        if not key or len(key) > MAX_META_KEY:
            v.add(f"{field}[{key[:32]}]", f"keys must be 1..{MAX_META_KEY} characters")
        if len(value.encode()) > MAX_META_VALUE_BYTES:
            v.add(f"{field}[{key[:32]}]", f"values must be at most {MAX_META_VALUE_BYTES} bytes")


def _key(v: _Violations, key: str) -> None:
    if len(key) > MAX_KEY:
        v.add("idempotency_key", f"must be at most {MAX_KEY} characters")


def _annotations(v: _Violations, fingerprint: str, annotations: Mapping[str, str]) -> None:
    if len(fingerprint) > MAX_KEY:
        v.add("request_fingerprint", f"must be at most {MAX_KEY} characters")
    if len(annotations) > MAX_ANNOTATIONS:
        v.add("annotations", f"must hold at most {MAX_ANNOTATIONS} pairs")
    for name, value in annotations.items():
        if not 1 <= len(name) <= 64 or len(value.encode()) > 1024:
            v.add(f"annotations[{name[:64]}]", "keys must be 1..64 chars, values <= 1024 bytes")


def _ttl(v: _Violations, ttl: duration_pb2.Duration) -> None:
    if not 0 <= seconds_of(ttl) <= MAX_TTL_S:
        v.add("ttl", "must be 0..10 years (0 means never)")


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


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
        metadata=dict(record.metadata),
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
    """Validated search parameters from a query and ``RecallOptions``."""
    v = _Violations()
    if not query.strip() or len(query.encode()) > MAX_QUERY_BYTES:
        v.add("query", f"must be 1..{MAX_QUERY_BYTES} bytes and not blank")
    k = options.k or 5
    if not 1 <= k <= 100:
        v.add("options.k", "must be 1..100")
    semantic = (
        options.semantic_weight if options.HasField("semantic_weight") else DEFAULT_SEMANTIC_WEIGHT
    )
    keyword = (
        options.keyword_weight if options.HasField("keyword_weight") else DEFAULT_KEYWORD_WEIGHT
    )
    if not 0 <= semantic <= 1:
        v.add("options.semantic_weight", "must be 0..1")
    if not 0 <= keyword <= 1:
        v.add("options.keyword_weight", "must be 0..1")
    if semantic == 0 and keyword == 0:
        v.add("options.semantic_weight", "semantic and keyword weights cannot both be 0")
    mode = _MODES.get(options.mode)
    if mode is None:
        v.add("options.mode", "unknown fusion mode")
    _metadata(v, "options.metadata_filter", options.metadata_filter)
    v.raise_if_any()
    return RecallParams(
        query=query,
        k=k,
        min_score=options.min_score,
        mode=mode or Fusion.WEIGHTED,
        semantic_weight=semantic,
        keyword_weight=keyword,
        metadata_filter=dict(options.metadata_filter),
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """``llmesh.v1.MemoryService`` over a :class:`MemoryEngine`."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.engine = engine

    async def AppendMessages(
        self, request: memory_pb2.AppendMessagesRequest, context: Any
    ) -> memory_pb2.AppendMessagesResponse:
        v = _Violations()
        _namespace(v, request.namespace)
        _session_id(v, request.session_id)
        if not 1 <= len(request.messages) <= MAX_MESSAGES:
            v.add("messages", f"must hold 1..{MAX_MESSAGES} messages")
        for i, message in enumerate(request.messages):
            if message.role not in (
                common_pb2.CHAT_ROLE_SYSTEM,
                common_pb2.CHAT_ROLE_USER,
                common_pb2.CHAT_ROLE_ASSISTANT,
            ):
                v.add(f"messages[{i}].role", "must be SYSTEM, USER or ASSISTANT")
        if request.expected_version < 0:
            v.add("expected_version", "must be >= 0")
        _key(v, request.idempotency_key)
        _ttl(v, request.ttl)
        _annotations(v, request.request_fingerprint, request.annotations)
        v.raise_if_any()
        result = await self.engine.append(
            request.namespace,
            request.session_id,
            [MessageIn(int(m.role), m.content) for m in request.messages],
            expected_version=request.expected_version,
            idempotency_key=request.idempotency_key,
            ttl_s=seconds_of(request.ttl),
            request_fingerprint=request.request_fingerprint,
            annotations=request.annotations,
        )
        return memory_pb2.AppendMessagesResponse(
            version=result.version, replayed=result.replayed, annotations=result.annotations
        )

    async def GetAppend(
        self, request: memory_pb2.GetAppendRequest, context: Any
    ) -> memory_pb2.GetAppendResponse:
        v = _Violations()
        _namespace(v, request.namespace)
        if not 1 <= len(request.idempotency_key) <= MAX_KEY:
            v.add("idempotency_key", f"must be 1..{MAX_KEY} characters")
        v.raise_if_any()
        stored = await self.engine.get_append(request.namespace, request.idempotency_key)
        return memory_pb2.GetAppendResponse(
            session_id=stored.session_id,
            request_fingerprint=stored.request_fingerprint,
            version=stored.version,
            messages=[
                common_pb2.ChatMessage(role=m.role, content=m.content)  # type: ignore[arg-type]
                for m in stored.messages
            ],
            annotations=stored.annotations,
        )

    async def GetSession(
        self, request: memory_pb2.MemoryServiceGetSessionRequest, context: Any
    ) -> memory_pb2.MemoryServiceGetSessionResponse:
        v = _Violations()
        _namespace(v, request.namespace)
        _session_id(v, request.session_id)
        limit = request.limit or 50
        if not 1 <= limit <= 1000:
            v.add("limit", "must be 1..1000")
        v.raise_if_any()
        record, messages = await self.engine.get_session(
            request.namespace, request.session_id, limit=limit
        )
        return memory_pb2.MemoryServiceGetSessionResponse(
            session=session_info(record), messages=[chat_message(m) for m in messages]
        )

    async def ListSessions(
        self, request: memory_pb2.MemoryServiceListSessionsRequest, context: Any
    ) -> memory_pb2.MemoryServiceListSessionsResponse:
        v = _Violations()
        _namespace(v, request.namespace)
        size = request.page_size or 50
        if not 1 <= size <= 500:
            v.add("page_size", "must be 1..500")
        v.raise_if_any()
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
        v = _Violations()
        _namespace(v, request.namespace)
        _session_id(v, request.session_id)
        v.raise_if_any()
        deleted = await self.engine.delete_session(request.namespace, request.session_id)
        return memory_pb2.MemoryServiceDeleteSessionResponse(deleted_messages=deleted)

    async def Remember(
        self, request: memory_pb2.MemoryServiceRememberRequest, context: Any
    ) -> memory_pb2.MemoryServiceRememberResponse:
        v = _Violations()
        _namespace(v, request.namespace)
        if not request.text.strip() or len(request.text.encode()) > MAX_TEXT_BYTES:
            v.add("text", f"must be 1..{MAX_TEXT_BYTES} bytes and not blank")
        _metadata(v, "metadata", request.metadata)
        _ttl(v, request.ttl)
        _key(v, request.idempotency_key)
        v.raise_if_any()
        result = await self.engine.remember(
            request.namespace,
            request.text,
            metadata=dict(request.metadata),
            ttl_s=seconds_of(request.ttl),
            idempotency_key=request.idempotency_key,
        )
        return memory_pb2.MemoryServiceRememberResponse(
            id=result.id, duplicate=result.duplicate, embedded=result.embedded
        )

    async def Recall(
        self, request: memory_pb2.MemoryServiceRecallRequest, context: Any
    ) -> memory_pb2.MemoryServiceRecallResponse:
        v = _Violations()
        _namespace(v, request.namespace)
        v.raise_if_any()
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
        v = _Violations()
        _namespace(v, request.namespace)
        if not request.ids and not request.metadata_filter:
            v.add("ids", "give ids, a metadata_filter, or both")
        _metadata(v, "metadata_filter", request.metadata_filter)
        v.raise_if_any()
        before = (
            request.created_before.ToNanoseconds() / 1e9
            if request.HasField("created_before")
            else None
        )
        deleted = await self.engine.forget(
            request.namespace,
            ids=list(request.ids),
            metadata_filter=dict(request.metadata_filter),
            created_before=before,
        )
        return memory_pb2.MemoryServiceForgetResponse(deleted=deleted)
