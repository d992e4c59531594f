"""The fuzz suite's mesh and wire helpers, shared by its test modules (and the security
suite): every service in this process on real parts, raw-byte calls to any method, health.

The mesh: registry (in memory), an inference worker on the tiny model, memory on SQLite,
and the gateway in front of them (an admin key), each a real gRPC server on a free
loopback port. ``mesh()`` runs it on the caller's event loop; ``BackgroundMesh`` runs it
on a loop of its own in a thread, for synchronous callers (hypothesis tests, plain gRPC
stubs).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from e2etest.fuzz_payloads import MODEL
from google.protobuf import descriptor as pb_descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.inprocess import serving
from llmesh.testing.polling import await_until
from llmesh.v1 import (
    common_pb2,
    gateway_pb2,
    inference_pb2,
    memory_pb2,
    registry_pb2,
    registry_pb2_grpc,
)

HEALTH_NAMES = ("", "liveness", "readiness")
BAD_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})


@dataclass
class Target:
    """One method on one server, with the metadata its calls carry."""

    address: str
    service: pb_descriptor.ServiceDescriptor
    method: pb_descriptor.MethodDescriptor
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def id(self) -> str:
        return f"{self.service.name}.{self.method.name}"


@dataclass
class Mesh:
    addresses: dict[str, str]  # service package name -> address
    admin_key: str
    targets: list[Target]
    parts: dict[str, Any] = field(default_factory=dict)  # what each service's wire() yielded
    hosts: dict[str, Any] = field(default_factory=dict)  # each service's ServiceHost


def public_targets(
    addresses: dict[str, str], gateway_metadata: tuple[tuple[str, str], ...] = ()
) -> list[Target]:
    """Every method of every llmesh service, on its server (gateway calls carry
    ``gateway_metadata``)."""
    targets: list[Target] = []
    for module, name, metadata in (
        (gateway_pb2, "gateway", gateway_metadata),
        (registry_pb2, "registry", ()),
        (memory_pb2, "memory", ()),
        (inference_pb2, "inference", ()),
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                targets.append(Target(addresses[name], service, method, metadata))
    return targets


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path, models_dir: Path, **gateway: Any) -> AsyncIterator[Mesh]:
    """Every service in this process; ``gateway`` overrides GatewaySettings fields."""
    from llmesh_gateway import wiring as gateway_wiring
    from llmesh_gateway.auth import AuthGuard
    from llmesh_gateway.settings import GatewaySettings
    from llmesh_inference import wiring as inference_wiring
    from llmesh_inference.settings import InferenceSettings
    from llmesh_memory import wiring as memory_wiring
    from llmesh_memory.settings import MemorySettings
    from llmesh_registry import wiring as registry_wiring
    from llmesh_registry.settings import RegistrySettings

    async with contextlib.AsyncExitStack() as stack:
        reg_settings = RegistrySettings(port=0, lease_ttl_ms=600_000, evict_after_ms=600_000)
        registry = await stack.enter_async_context(
            serving(
                reg_settings,
                registry_wiring.SERVICE_NAMES,
                lambda h: registry_wiring.wire(h, reg_settings),
            )
        )
        inf_settings = InferenceSettings(
            port=0,
            models_dir=models_dir,
            default_model=MODEL,
            embeddings=False,
            grace_period_s=0.5,
            log_format="text",
        )
        inference = await stack.enter_async_context(
            serving(
                inf_settings,
                inference_wiring.SERVICE_NAMES,
                lambda h: inference_wiring.wire(h, inf_settings),
            )
        )
        mem_settings = MemorySettings(
            port=0, sqlite_path=tmp_path / "memory.db", embedder_target=""
        )
        memory = await stack.enter_async_context(
            serving(
                mem_settings,
                memory_wiring.SERVICE_NAMES,
                lambda h: memory_wiring.wire(h, mem_settings),
            )
        )
        async with grpc.aio.insecure_channel(registry.address) as channel:
            await registry_pb2_grpc.RegistryServiceStub(channel).Register(
                registry_pb2.RegisterRequest(
                    worker=common_pb2.WorkerInfo(
                        worker_id="w0",
                        address=inference.address,
                        models_loaded=[MODEL],
                        models_available=[MODEL],
                        capacity=8,
                        state=common_pb2.WORKER_STATE_READY,
                    )
                ),
                timeout=10,
            )
        gw_fields: dict[str, Any] = {
            "port": 0,
            "data_dir": tmp_path / "gateway",
            "registry_address": registry.address,
            "memory_address": memory.address,
            "rate_limit": {"generations_per_minute": 10**6, "requests_per_minute": 10**6},
        }
        gw_fields.update(gateway)
        gw_settings = GatewaySettings(**gw_fields)
        auth = AuthGuard()
        gateway_served = await stack.enter_async_context(
            serving(
                gw_settings,
                gateway_wiring.SERVICE_NAMES,
                lambda h: gateway_wiring.wire(h, gw_settings, auth),
                guards=[auth],
            )
        )
        await await_until(
            lambda: _has_worker(gateway_served.parts),
            timeout_s=15,
            what="gateway sees the worker",
        )
        admin = await gateway_served.parts.keys.create(
            name="fuzz-admin", role="admin", tenant="ops"
        )
        addresses = {
            "gateway": gateway_served.address,
            "registry": registry.address,
            "memory": memory.address,
            "inference": inference.address,
        }
        for address in addresses.values():
            await await_until(
                lambda address=address: ready(address), timeout_s=60, what=f"{address} ready"
            )
        bearer = (("authorization", f"Bearer {admin.api_key}"),)
        yield Mesh(
            addresses=addresses,
            admin_key=admin.api_key,
            targets=public_targets(addresses, bearer),
            parts={
                "gateway": gateway_served.parts,
                "memory": memory.parts,
                "registry": registry.parts,
                "inference": inference.parts,
                "gateway_settings": gw_settings,
            },
            hosts={
                "gateway": gateway_served.host,
                "memory": memory.host,
                "registry": registry.host,
                "inference": inference.host,
            },
        )


async def _has_worker(gateway: Any) -> bool:
    return bool(gateway.cache.workers)


async def ready(address: str) -> bool:
    return (await health(address))["readiness"] == health_pb2.HealthCheckResponse.SERVING


async def health(address: str) -> dict[str, int]:
    """The status of each health name of the server at ``address``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        out = {}
        for name in HEALTH_NAMES:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            out[name] = reply.status
        return out


def health_sync(address: str) -> dict[str, int]:
    """:func:`health` for synchronous callers."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
            for name in HEALTH_NAMES
        }


async def send(
    channel: grpc.aio.Channel, target: Target, payload: bytes, *, timeout_s: float = 3.0
) -> grpc.StatusCode:
    """Send ``payload`` as the raw request of ``target``; the status code it ends with."""
    try:
        if target.method.server_streaming:
            call = channel.unary_stream(
                target.path, request_serializer=None, response_deserializer=None
            )
            async for _ in call(payload, timeout=timeout_s, metadata=target.metadata):
                pass
        else:
            unary = channel.unary_unary(
                target.path, request_serializer=None, response_deserializer=None
            )
            await unary(payload, timeout=timeout_s, metadata=target.metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def send_sync(
    channel: grpc.Channel,
    target: Target,
    payload: bytes,
    *,
    timeout_s: float = 3.0,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> grpc.RpcError | None:
    """:func:`send` for synchronous callers: the error the call ended with, or None."""
    meta = target.metadata if metadata is None else metadata
    try:
        if target.method.server_streaming:
            stream = channel.unary_stream(
                target.path, request_serializer=None, response_deserializer=None
            )
            for _ in stream(payload, timeout=timeout_s, metadata=meta):
                pass
        else:
            unary = channel.unary_unary(
                target.path, request_serializer=None, response_deserializer=None
            )
            unary(payload, timeout=timeout_s, metadata=meta)
    except grpc.RpcError as exc:
        return exc
    return None


def normal_calls_work(running: Mesh) -> None:
    """A normal call on every service succeeds (raises otherwise): a generation through
    the gateway, a memory write, the registry's and the worker's listings."""
    bearer = (("authorization", f"Bearer {running.admin_key}"),)
    with grpc.insecure_channel(running.addresses["gateway"]) as channel:
        reply = channel.unary_unary(
            "/llmesh.v1.GatewayService/Generate",
            request_serializer=gateway_pb2.GenerateRequest.SerializeToString,
            response_deserializer=gateway_pb2.GenerateResponse.FromString,
        )(
            gateway_pb2.GenerateRequest(
                input=common_pb2.GenerationInput(
                    prompt="hello", sampling=common_pb2.SamplingParams(max_tokens=2)
                )
            ),
            timeout=30,
            metadata=bearer,
        )
        assert reply.usage.completion_tokens >= 1 and reply.finish_reason
    with grpc.insecure_channel(running.addresses["memory"]) as channel:
        stored = channel.unary_unary(
            "/llmesh.v1.MemoryService/Remember",
            request_serializer=memory_pb2.MemoryServiceRememberRequest.SerializeToString,
            response_deserializer=memory_pb2.MemoryServiceRememberResponse.FromString,
        )(
            memory_pb2.MemoryServiceRememberRequest(
                namespace="after", memory=common_pb2.MemoryDraft(text="still fine")
            ),
            timeout=10,
        )
        assert stored.id
    with grpc.insecure_channel(running.addresses["registry"]) as channel:
        listed = channel.unary_unary(
            "/llmesh.v1.RegistryService/ListWorkers",
            request_serializer=registry_pb2.RegistryServiceListWorkersRequest.SerializeToString,
            response_deserializer=registry_pb2.RegistryServiceListWorkersResponse.FromString,
        )(registry_pb2.RegistryServiceListWorkersRequest(), timeout=10)
        assert any(w.worker_id == "w0" for w in listed.workers)
    with grpc.insecure_channel(running.addresses["inference"]) as channel:
        models = channel.unary_unary(
            "/llmesh.v1.InferenceService/ListModels",
            request_serializer=inference_pb2.InferenceServiceListModelsRequest.SerializeToString,
            response_deserializer=inference_pb2.InferenceServiceListModelsResponse.FromString,
        )(inference_pb2.InferenceServiceListModelsRequest(), timeout=10)
        assert any(m.name == MODEL for m in models.models)


class BackgroundMesh:
    """:func:`mesh` served from an event loop in a thread of its own (a context manager
    for synchronous callers); :meth:`call` runs a coroutine function on that loop."""

    def __init__(self, tmp_path: Path, models_dir: Path, **gateway: Any) -> None:
        self._manager = mesh(tmp_path, models_dir, **gateway)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fuzz-mesh", daemon=True
        )
        self.mesh: Mesh | None = None

    def call(self, fn: Callable[[], Any], *, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout_s)

    def __enter__(self) -> Mesh:
        self._thread.start()
        self.mesh = self.call(self._manager.__aenter__, timeout_s=240)
        return self.mesh

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.call(lambda: self._manager.__aexit__(None, None, None), timeout_s=120)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
