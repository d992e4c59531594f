"""The memory service over real gRPC: real MiniLM embeddings, degradation, errors, health."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.testing.servers import free_port
from llmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from llmesh_memory.settings import MemorySettings
from llmesh_memory.wiring import SERVICE_NAMES, wire

NS = "acme"


@contextlib.asynccontextmanager
async def memory_server(**overrides: Any) -> AsyncIterator[tuple[Any, grpc.aio.Channel]]:
    settings = MemorySettings(port=0, **overrides)
    async with serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served:
        channel = grpc.aio.insecure_channel(served.address)
        try:
            yield memory_pb2_grpc.MemoryServiceStub(channel), channel
        finally:
            await channel.close(None)


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The rich error details of a failed call, by type name."""
    out: dict[str, Any] = {}
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(bytes(value))
            for item in status.details:
                for cls in (
                    error_details_pb2.ErrorInfo,
                    error_details_pb2.RetryInfo,
                    error_details_pb2.BadRequest,
                ):
                    if item.Is(cls.DESCRIPTOR):
                        msg = cls()
                        item.Unpack(msg)
                        out[cls.__name__] = msg
    return out


MEMORIES = [
    "The payment service on db-replica-07 ran out of connections during the Black Friday sale.",
    "Alice is allergic to peanuts and prefers vegetarian restaurants for team dinners.",
    "Error E4417 means the customer's disk quota is exhausted; raise it in the admin console.",
    "Our on-call rotation changes every Monday at 09:00 UTC.",
    "The office wifi password is rotated on the first day of each month.",
]


async def remember_all(stub: Any, texts: list[str], ns: str = NS) -> list[Any]:
    return [
        await stub.Remember(
            memory_pb2.MemoryServiceRememberRequest(
                namespace=ns, memory=common_pb2.MemoryDraft(text=t)
            )
        )
        for t in texts
    ]


async def test_paraphrase_finds_memory_through_real_minilm(
    tmp_path: Path, minilm_target: str
) -> None:
    async with memory_server(sqlite_path=tmp_path / "m.db", embedder_target=minilm_target) as (
        stub,
        _,
    ):
        replies = await remember_all(stub, MEMORIES)
        assert all(r.embedded and not r.duplicate for r in replies)
        # No content word in common with the target memory.
        reply = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(
                namespace=NS,
                query="Which nut does a colleague react badly to?",
                options=common_pb2.RecallOptions(k=3),
            )
        )
        assert not reply.degraded
        assert reply.hits[0].memory.id == replies[1].id
        assert reply.hits[0].semantic_score > 0.2 and reply.hits[0].keyword_score == 0
        # An exact rare token wins through the keyword half.
        reply = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(namespace=NS, query="what is E4417")
        )
        assert reply.hits[0].memory.id == replies[2].id
        assert reply.hits[0].keyword_score > 0.5
        # Other namespaces see nothing of it.
        other = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(namespace="other", query="peanuts allergy")
        )
        assert list(other.hits) == []
        # Each mode answers; RRF and weighted agree on the clear winner.
        for mode in (common_pb2.FUSION_MODE_RRF, common_pb2.FUSION_MODE_SEMANTIC):
            reply = await stub.Recall(
                memory_pb2.MemoryServiceRecallRequest(
                    namespace=NS,
                    query="peanut allergy of Alice",
                    options=common_pb2.RecallOptions(mode=mode, k=2),
                )
            )
            assert reply.hits[0].memory.id == replies[1].id


async def test_keyword_only_when_embedder_down_then_backfill(
    tmp_path: Path, start_minilm: Any
) -> None:
    port = free_port()
    async with memory_server(
        sqlite_path=tmp_path / "m.db",
        embedder_target=f"127.0.0.1:{port}",
        embedder_cooldown_s=0.05,
        backfill_interval_s=0.1,
        embed_timeout_s=30.0,
    ) as (stub, _):
        replies = await remember_all(stub, MEMORIES)
        assert not any(r.embedded for r in replies)
        reply = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(namespace=NS, query="db-replica-07 connections")
        )
        assert reply.degraded and "keyword-only" in reply.degraded_reason
        assert reply.hits[0].memory.id == replies[0].id
        assert reply.hits[0].semantic_score == 0
        # The embedder comes up: vectors are back-filled, searches are hybrid again.
        with start_minilm(port):

            async def hybrid() -> bool:
                r = await stub.Recall(
                    memory_pb2.MemoryServiceRecallRequest(
                        namespace=NS, query="Which nut does a colleague react badly to?"
                    )
                )
                return (
                    not r.degraded
                    and len(r.hits) > 0
                    and r.hits[0].memory.embedded
                    and r.hits[0].memory.id == replies[1].id
                )

            await await_until(hybrid, timeout_s=60, interval_s=0.2, what="back-fill")


async def test_version_conflict_and_replay_over_grpc(tmp_path: Path) -> None:
    async with memory_server(sqlite_path=tmp_path / "m.db", embedder_target="") as (stub, _):
        user = common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="hi")
        req = memory_pb2.AppendMessagesRequest(
            namespace=NS,
            session_id="chat-1",
            messages=[user],
            expected_version=0,
            idempotency_key="turn-1",
        )
        first = await stub.AppendMessages(req)
        again = await stub.AppendMessages(req)
        assert (first.version, first.replayed, again.version, again.replayed) == (1, False, 1, True)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AppendMessages(
                memory_pb2.AppendMessagesRequest(
                    namespace=NS, session_id="chat-1", messages=[user], expected_version=0
                )
            )
        assert info.value.code() == grpc.StatusCode.ABORTED
        found = details(info.value)
        assert found["ErrorInfo"].reason == "VERSION_CONFLICT"
        assert found["ErrorInfo"].metadata["current_version"] == "1"
        assert "RetryInfo" in found
        session = await stub.GetSession(
            memory_pb2.MemoryServiceGetSessionRequest(namespace=NS, session_id="chat-1")
        )
        assert session.session.version == 1 and [m.content for m in session.messages] == ["hi"]
        listed = await stub.ListSessions(
            memory_pb2.MemoryServiceListSessionsRequest(namespace=NS, page_size=1)
        )
        assert [s.session_id for s in listed.sessions] == ["chat-1"]
        assert listed.next_page_token == ""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListSessions(
                memory_pb2.MemoryServiceListSessionsRequest(namespace=NS, page_token="garbage!")
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        deleted = await stub.DeleteSession(
            memory_pb2.MemoryServiceDeleteSessionRequest(namespace=NS, session_id="chat-1")
        )
        assert deleted.deleted_messages == 1
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetSession(
                memory_pb2.MemoryServiceGetSessionRequest(namespace=NS, session_id="chat-1")
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_requests_name_every_field(tmp_path: Path) -> None:
    async with memory_server(sqlite_path=tmp_path / "m.db", embedder_target="") as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Remember(
                memory_pb2.MemoryServiceRememberRequest(
                    namespace="",
                    memory=common_pb2.MemoryDraft(
                        text="",
                        ttl=duration_pb2.Duration(seconds=10**11),
                        metadata=common_pb2.Metadata(entries={f"k{i}": "v" for i in range(40)}),
                    ),
                )
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = {v.field for v in details(info.value)["BadRequest"].field_violations}
        assert {"namespace", "memory.text", "memory.ttl", "memory.metadata.entries"} <= fields
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Recall(
                memory_pb2.MemoryServiceRecallRequest(
                    namespace=NS,
                    query="x",
                    options=common_pb2.RecallOptions(k=500, semantic_weight=2.0),
                )
            )
        fields = {v.field for v in details(info.value)["BadRequest"].field_violations}
        assert fields == {"options.k", "options.semantic_weight"}
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Forget(memory_pb2.MemoryServiceForgetRequest(namespace=NS))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AppendMessages(
                memory_pb2.AppendMessagesRequest(
                    namespace=NS, session_id="bad id!", messages=[common_pb2.ChatMessage()]
                )
            )
        fields = {v.field for v in details(info.value)["BadRequest"].field_violations}
        assert fields == {"session_id", "messages[0].role"}


async def test_forget_and_dedupe_over_grpc(tmp_path: Path) -> None:
    async with memory_server(sqlite_path=tmp_path / "m.db", embedder_target="") as (stub, _):
        a = await stub.Remember(
            memory_pb2.MemoryServiceRememberRequest(
                namespace=NS,
                memory=common_pb2.MemoryDraft(
                    text="Standup is at 10", metadata=common_pb2.Metadata(entries={"src": "chat"})
                ),
            )
        )
        b = await stub.Remember(
            memory_pb2.MemoryServiceRememberRequest(
                namespace=NS, memory=common_pb2.MemoryDraft(text="standup  is at 10")
            )
        )
        assert b.duplicate and b.id == a.id
        found = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(namespace=NS, query="standup")
        )
        assert [h.memory.id for h in found.hits] == [a.id]
        assert found.hits[0].memory.metadata.entries["src"] == "chat"
        strict = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(
                namespace=NS, query="standup", options=common_pb2.RecallOptions(min_score=1.01)
            )
        )
        assert list(strict.hits) == []
        filtered = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(
                namespace=NS,
                query="standup",
                options=common_pb2.RecallOptions(
                    metadata_filter=common_pb2.Metadata(entries={"src": "doc"})
                ),
            )
        )
        assert list(filtered.hits) == []
        gone = await stub.Forget(
            memory_pb2.MemoryServiceForgetRequest(
                namespace=NS, metadata_filter=common_pb2.Metadata(entries={"src": "chat"})
            )
        )
        assert gone.deleted == 1
        reply = await stub.Recall(
            memory_pb2.MemoryServiceRecallRequest(namespace=NS, query="standup")
        )
        assert list(reply.hits) == [] and reply.degraded


async def test_readiness_follows_the_store(tmp_path: Path) -> None:
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    async with memory_server(
        store="postgres",
        postgres_dsn=dead,
        embedder_target="",
        readiness_interval_s=0.1,
    ) as (stub, channel):
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="readiness"))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Remember(
                memory_pb2.MemoryServiceRememberRequest(
                    namespace=NS, memory=common_pb2.MemoryDraft(text="lost?")
                ),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "RetryInfo" in details(info.value)
    async with memory_server(sqlite_path=tmp_path / "m.db", embedder_target="") as (_, channel):
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="readiness"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_nul_bytes_and_huge_id_lists_are_client_errors(tmp_path: Path) -> None:
    """NUL in stored text (PostgreSQL refuses it) and uncapped id lists never reach a store."""
    async with memory_server(sqlite_path=tmp_path / "m.db", embedder_target="") as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as nul:
            await stub.Remember(
                memory_pb2.MemoryServiceRememberRequest(
                    namespace=NS, memory=common_pb2.MemoryDraft(text="a\x00b")
                )
            )
        with pytest.raises(grpc.aio.AioRpcError) as many:
            await stub.Forget(
                memory_pb2.MemoryServiceForgetRequest(
                    namespace=NS, ids=[f"m{i}" for i in range(100_000)]
                )
            )
        # The store still answers.
        kept = await stub.Remember(
            memory_pb2.MemoryServiceRememberRequest(
                namespace=NS, memory=common_pb2.MemoryDraft(text="ok")
            )
        )
    assert nul.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = details(nul.value)["BadRequest"].field_violations
    assert (violation.field, violation.reason) == ("memory.text", "string.pattern")
    assert many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = details(many.value)["BadRequest"].field_violations
    assert (violation.field, violation.reason) == ("ids", "repeated.max_items")
    assert kept.id
