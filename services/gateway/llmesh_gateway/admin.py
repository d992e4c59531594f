"""``llmesh.v1.AdminService``: workers, models and API keys (role admin, audited)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from llmesh.kernel.context import current_request
from llmesh.kernel.durations import seconds_of
from llmesh.kernel.errors import NotFound
from llmesh.kernel.timestamps import to_timestamp
from llmesh.kernel.upstream import unary
from llmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from llmesh_gateway import key_admin
from llmesh_gateway.apikeys import ApiKeyManager
from llmesh_gateway.audit import AuditLog
from llmesh_gateway.key_admin import note_detail
from llmesh_gateway.principal import ROLE_ADMIN, ROLE_USER
from llmesh_gateway.registry_cache import RegistryCache
from llmesh_gateway.router import Router
from llmesh_gateway.store import (
    ApiKeyRecord,
    AuditRecord,
    decode_page_token,
    encode_page_token,
)

Context = grpc.aio.ServicerContext[Any, Any]
_ROLE_NAMES = {gateway_pb2.ROLE_USER: ROLE_USER, gateway_pb2.ROLE_ADMIN: ROLE_ADMIN}
_ROLE_ENUMS = {v: k for k, v in _ROLE_NAMES.items()}
R = TypeVar("R")
Handler = Callable[["AdminServicer", Any, Context], Awaitable[R]]


def audited(handler: Handler[R]) -> Handler[R]:
    """Audit every call of an AdminService method: its principal, outcome and the detail
    it noted (the gateway's auth guard admitted it as an admin before it runs)."""

    @functools.wraps(handler)
    async def call(self: AdminServicer, request: Any, context: Context) -> R:
        ctx = current_request()
        if self._audit is None or ctx is None:
            return await handler(self, request, context)
        principal = ctx.principal if ctx.principal is not None else "unknown"
        async with self._audit.audited(principal=principal, action=ctx.method):
            return await handler(self, request, context)

    return call


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    return to_timestamp(seconds)  # clamped: a bad stored time never fails a listing


def key_info(record: ApiKeyRecord) -> gateway_pb2.ApiKeyInfo:
    """The public view of a key record (no salt, no digest)."""
    return gateway_pb2.ApiKeyInfo(
        key_id=record.key_id,
        name=record.name,
        role=_ROLE_ENUMS.get(record.role, gateway_pb2.ROLE_UNSPECIFIED),
        tenant=record.tenant,
        created_at=_timestamp(record.created_at),
        expires_at=_timestamp(record.expires_at),
        revoked_at=_timestamp(record.revoked_at),
        fingerprint=record.fingerprint,
    )


def audit_event(record: AuditRecord) -> gateway_pb2.AuditEvent:
    return gateway_pb2.AuditEvent(
        time=_timestamp(record.time),
        principal=record.principal,
        tenant=record.tenant,
        action=record.action,
        outcome=record.outcome,
        detail=record.detail,
        request_id=record.request_id,
    )


class AdminServicer(gateway_pb2_grpc.AdminServiceServicer):
    """Operations on the mesh."""

    def __init__(
        self,
        *,
        cache: RegistryCache,
        registry: registry_pb2_grpc.RegistryServiceAsyncStub,
        router: Router,
        keys: ApiKeyManager,
        audit: AuditLog | None = None,
    ) -> None:
        self._cache = cache
        self._registry = registry
        self._router = router
        self._keys = keys
        self._audit = audit

    @audited
    async def ListWorkers(
        self, request: gateway_pb2.ListWorkersRequest, context: Context
    ) -> gateway_pb2.ListWorkersResponse:
        workers = [
            w
            for w in self._cache.list()
            if (not request.model or request.model in (*w.models_loaded, *w.models_available))
            and (not request.state or w.state == request.state)
        ]
        return gateway_pb2.ListWorkersResponse(
            workers=workers, staleness_seconds=self._cache.staleness_s
        )

    @audited
    async def DrainWorker(
        self, request: gateway_pb2.DrainWorkerRequest, context: Context
    ) -> gateway_pb2.DrainWorkerResponse:
        note_detail(f"worker={request.worker_id} reason={request.reason[:200]}")
        response = await unary(
            self._registry.SetWorkerState,
            registry_pb2.SetWorkerStateRequest(
                worker_id=request.worker_id,
                state=common_pb2.WORKER_STATE_DRAINING,
                reason=request.reason or "drained by an admin",
            ),
            what="draining the worker",
        )
        self._cache.workers[response.worker.worker_id] = response.worker
        return gateway_pb2.DrainWorkerResponse(worker=response.worker)

    def _targets(self, worker_id: str, model: str, *, loaded_only: bool) -> list[Any]:
        if worker_id:
            worker = self._cache.get(worker_id)
            if worker is None:
                raise NotFound(f"no worker {worker_id!r}", reason="WORKER_NOT_FOUND")
            return [worker]
        if loaded_only:
            targets = [w for w in self._cache.list() if model in w.models_loaded]
        else:
            targets = [w for w in self._cache.list() if w.state == common_pb2.WORKER_STATE_READY]
        if not targets:
            raise NotFound(
                f"no worker to {'unload' if loaded_only else 'load'} {model!r}",
                reason="WORKER_NOT_FOUND",
            )
        return targets

    async def _each(self, targets: list[Any], call: Any, request: Any, what: str) -> list[str]:
        async def one(worker: common_pb2.WorkerInfo) -> str:
            stub = inference_pb2_grpc.InferenceServiceStub(self._router.pool.get(worker.address))
            await unary(getattr(stub, call), request, what=what)
            return str(worker.worker_id)

        results = await asyncio.gather(*(one(w) for w in targets), return_exceptions=True)
        done = [r for r in results if isinstance(r, str)]
        if not done:
            raise next(r for r in results if isinstance(r, BaseException))
        return done

    @audited
    async def LoadModel(
        self, request: gateway_pb2.LoadModelRequest, context: Context
    ) -> gateway_pb2.LoadModelResponse:
        note_detail(f"model={request.model} worker={request.worker_id or '*'}")
        targets = self._targets(request.worker_id, request.model, loaded_only=False)
        done = await self._each(
            targets,
            "LoadModel",
            inference_pb2.InferenceServiceLoadModelRequest(model=request.model),
            "LoadModel",
        )
        return gateway_pb2.LoadModelResponse(worker_ids=done)

    @audited
    async def UnloadModel(
        self, request: gateway_pb2.UnloadModelRequest, context: Context
    ) -> gateway_pb2.UnloadModelResponse:
        note_detail(f"model={request.model} worker={request.worker_id or '*'}")
        targets = self._targets(request.worker_id, request.model, loaded_only=True)
        done = await self._each(
            targets,
            "UnloadModel",
            inference_pb2.InferenceServiceUnloadModelRequest(model=request.model),
            "UnloadModel",
        )
        return gateway_pb2.UnloadModelResponse(worker_ids=done)

    @audited
    async def CreateApiKey(
        self, request: gateway_pb2.CreateApiKeyRequest, context: Context
    ) -> gateway_pb2.CreateApiKeyResponse:
        created = await key_admin.create_key(
            self._keys,
            name=request.name,
            role=_ROLE_NAMES.get(request.role, ""),
            tenant=request.tenant,
            ttl_s=seconds_of(request.ttl),
            request_id=request.request_id,
        )
        record = created.record
        return gateway_pb2.CreateApiKeyResponse(api_key=created.api_key, info=key_info(record))

    @audited
    async def RevokeApiKey(
        self, request: gateway_pb2.RevokeApiKeyRequest, context: Context
    ) -> gateway_pb2.RevokeApiKeyResponse:
        record = await key_admin.revoke_key(self._keys, request.key_id)
        return gateway_pb2.RevokeApiKeyResponse(info=key_info(record))

    @audited
    async def ListApiKeys(
        self, request: gateway_pb2.ListApiKeysRequest, context: Context
    ) -> gateway_pb2.ListApiKeysResponse:
        after = decode_page_token("k", request.page_token) or 0
        size = request.page_size or 100
        records = await key_admin.list_keys(
            self._keys, after_seq=after, limit=size + 1, include_revoked=request.include_revoked
        )
        page = records[:size]
        token = encode_page_token("k", page[-1].seq) if len(records) > size else ""
        return gateway_pb2.ListApiKeysResponse(
            keys=[key_info(r) for r in page], next_page_token=token
        )

    @audited
    async def ListAuditEvents(
        self, request: gateway_pb2.ListAuditEventsRequest, context: Context
    ) -> gateway_pb2.ListAuditEventsResponse:
        before = decode_page_token("a", request.page_token)
        size = request.page_size or 100
        if self._audit is not None:
            await self._audit.flush()  # what was recorded before this call is listed
        records = await self._keys.store.list_audit(before_seq=before, limit=size + 1)
        page = records[:size]
        token = encode_page_token("a", page[-1].seq) if len(records) > size else ""
        return gateway_pb2.ListAuditEventsResponse(
            events=[audit_event(r) for r in page], next_page_token=token
        )
