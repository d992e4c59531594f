"""Fixtures for the gateway's service tests: a real gateway and a real registry in-process,
contract-level inference workers with fault injection, and a small in-memory memory service.
(End-to-end tests against every real service live in ``tests/test_e2e_*.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from llmesh.testing.inprocess import serving
from llmesh.v1 import (
    common_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from llmesh_gateway.auth import AuthGuard
from llmesh_gateway.settings import GatewaySettings
from llmesh_gateway.wiring import SERVICE_NAMES, Gateway, wire


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
                start=inference_pb2.InferenceServiceGenerateStart(model=request.model or "tiny")
            )
            if self.gate is not None:
                await self.gate.wait()
            text = "echo:" + (request.prompt or request.messages.messages[-1].content)
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
        self.memories[memory_id] = (request.namespace, request.text)
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


@dataclass
class Mesh:
    """A running gateway with its registry, workers and memory."""

    gateway: Gateway
    address: str
    registry_address: str
    workers: dict[str, FakeWorker]
    worker_servers: dict[str, grpc.aio.Server]
    memory: FakeMemory
    admin_key: str
    user_key: str
    other_tenant_key: str
    channel: grpc.aio.Channel

    def stub(self) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
        return gateway_pb2_grpc.GatewayServiceStub(self.channel)  # type: ignore[return-value]

    def admin(self) -> gateway_pb2_grpc.AdminServiceAsyncStub:
        return gateway_pb2_grpc.AdminServiceStub(self.channel)  # type: ignore[return-value]

    @staticmethod
    def auth(key: str) -> tuple[tuple[str, str], ...]:
        return bearer(key)

    @staticmethod
    def details(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
        return error_details(exc)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def error_details(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    """ErrorInfo / RetryInfo / BadRequest / QuotaFailure from an error's trailers."""
    found: dict[str, Any] = {}
    trailers: Any = exc.trailing_metadata() or ()
    for key, value in trailers:
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            for name, cls in (
                ("error_info", error_details_pb2.ErrorInfo),
                ("retry_info", error_details_pb2.RetryInfo),
                ("bad_request", error_details_pb2.BadRequest),
                ("quota_failure", error_details_pb2.QuotaFailure),
            ):
                if detail.Is(cls.DESCRIPTOR):
                    message = cls()
                    detail.Unpack(message)
                    found[name] = message
    return found


async def _serve(servicer_adder: Callable[[grpc.aio.Server], None]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    servicer_adder(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


# What the fake workers report about their models at registration (ListModels figures).
FIGURES = [
    common_pb2.ModelInfo(name="tiny", context_length=2048, parameters=1_000_000, dtype="float32"),
    common_pb2.ModelInfo(name="big", context_length=4096, parameters=9_000_000, dtype="float16"),
    common_pb2.ModelInfo(name="fake-embed", context_length=256, dtype="float32", embedding=True),
]


async def register_worker(
    registry_address: str, worker: FakeWorker, address: str, **fields: Any
) -> None:
    async with grpc.aio.insecure_channel(registry_address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await stub.Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id=worker.worker_id,
                    address=address,
                    models_loaded=worker.loaded,
                    models_available=["tiny", "big"],
                    capacity=4,
                    state=common_pb2.WORKER_STATE_READY,
                    models=FIGURES,
                    **fields,
                )
            )
        )


def _adder(fake: FakeWorker) -> Callable[[grpc.aio.Server], None]:
    return lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(fake, server)


@contextlib.asynccontextmanager
async def start_mesh(tmp_path: Path, *, workers: int = 2, **settings: Any) -> AsyncIterator[Mesh]:
    from llmesh_registry import wiring as registry_wiring
    from llmesh_registry.settings import RegistrySettings

    registry_settings = RegistrySettings(port=0, lease_ttl_ms=600_000, evict_after_ms=600_000)
    async with contextlib.AsyncExitStack() as stack:
        registry = await stack.enter_async_context(
            serving(
                registry_settings,
                registry_wiring.SERVICE_NAMES,
                lambda host: registry_wiring.wire(host, registry_settings),
            )
        )
        registry_address = registry.address

        memory = FakeMemory()
        memory_server, memory_address = await _serve(
            lambda s: memory_pb2_grpc.add_MemoryServiceServicer_to_server(memory, s)
        )
        stack.push_async_callback(memory_server.stop, 0)

        fakes: dict[str, FakeWorker] = {}
        servers: dict[str, grpc.aio.Server] = {}
        for i in range(workers):
            fake = FakeWorker(f"w{i}")
            server, address = await _serve(_adder(fake))
            stack.push_async_callback(server.stop, 0)
            fakes[fake.worker_id] = fake
            servers[fake.worker_id] = server
            await register_worker(registry_address, fake, address)

        settings.setdefault(
            "rate_limit", {"generations_per_minute": 6000, "requests_per_minute": 6000}
        )
        gw_settings = GatewaySettings(
            port=0,
            data_dir=tmp_path,
            registry_address=registry_address,
            memory_address=memory_address,
            **settings,
        )
        auth = AuthGuard()
        served = await stack.enter_async_context(
            serving(
                gw_settings,
                SERVICE_NAMES,
                lambda host: wire(host, gw_settings, auth),
                guards=[auth],
            )
        )
        gateway, port = served.parts, served.host.port
        deadline = time.monotonic() + 10
        while len(gateway.cache.workers) < workers:
            assert time.monotonic() < deadline, "gateway never saw the workers"
            await asyncio.sleep(0.01)
        admin = await gateway.keys.create(name="admin", role="admin", tenant="ops")
        user = await gateway.keys.create(name="user", role="user", tenant="acme")
        other = await gateway.keys.create(name="other", role="user", tenant="globex")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close, None)
        yield Mesh(
            gateway=gateway,
            address=f"127.0.0.1:{port}",
            registry_address=registry_address,
            workers=fakes,
            worker_servers=servers,
            memory=memory,
            admin_key=admin.api_key,
            user_key=user.api_key,
            other_tenant_key=other.api_key,
            channel=channel,
        )


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with start_mesh(tmp_path) as running:
        yield running


@pytest.fixture
def mesh_factory(tmp_path: Path) -> Callable[..., Any]:
    return lambda **kw: start_mesh(tmp_path, **kw)
