"""Fuzz every method of every service with random and mutated wire bytes.

A small mesh runs in this process on real parts: registry (in memory), an inference
worker on the tiny model, memory on SQLite, and the gateway in front of them (admin
key). Each method gets ``PER_METHOD`` payloads sent as raw bytes: mutations of a valid
request (bit flips, truncation, appended junk), invalid UTF-8 in each string field,
huge and overlong varints and out-of-range integers in each number field, lengths that
run past the end, wrong wire types, and plain random bytes. Nothing may come back
``UNKNOWN`` or ``INTERNAL``; health is unchanged and a normal call still works.

The payloads are made by ``e2etest.fuzz_payloads``; ``test_fuzz_rules.py`` decodes the
same kind locally and holds the kernel's native rule checker to protovalidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2etest.fuzz_payloads import MODEL, payloads, seed_requests
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PER_METHOD = int(os.environ.get("LLMESH_FUZZ_PER_METHOD", "500"))
CONCURRENCY = 16


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


@dataclass
class Mesh:
    addresses: dict[str, str]  # service package name -> address
    admin_key: str
    targets: list[Target]


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path, models_dir: Path) -> AsyncIterator[Mesh]:
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
        gw_settings = GatewaySettings(
            port=0,
            data_dir=tmp_path / "gateway",
            registry_address=registry.address,
            memory_address=memory.address,
            rate_limit={"generations_per_minute": 10**6, "requests_per_minute": 10**6},
        )
        auth = AuthGuard()
        gateway = await stack.enter_async_context(
            serving(
                gw_settings,
                gateway_wiring.SERVICE_NAMES,
                lambda h: gateway_wiring.wire(h, gw_settings, auth),
                guards=[auth],
            )
        )
        await await_until(
            lambda: _has_worker(gateway.parts), timeout_s=15, what="gateway sees the worker"
        )
        admin = await gateway.parts.keys.create(name="fuzz-admin", role="admin", tenant="ops")
        for address in (registry.address, inference.address, memory.address, gateway.address):
            await await_until(
                lambda address=address: _ready(address), timeout_s=60, what=f"{address} ready"
            )
        bearer = (("authorization", f"Bearer {admin.api_key}"),)
        addresses = {
            "gateway": gateway.address,
            "registry": registry.address,
            "memory": memory.address,
            "inference": inference.address,
        }
        targets: list[Target] = []
        for module, address, metadata in (
            (gateway_pb2, gateway.address, bearer),
            (registry_pb2, registry.address, ()),
            (memory_pb2, memory.address, ()),
            (inference_pb2, inference.address, ()),
        ):
            for service in module.DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    targets.append(Target(address, service, method, metadata))
        yield Mesh(addresses=addresses, admin_key=admin.api_key, targets=targets)


async def _has_worker(gateway: Any) -> bool:
    return bool(gateway.cache.workers)


async def _ready(address: str) -> bool:
    return (await _health(address))["readiness"] == health_pb2.HealthCheckResponse.SERVING


async def _health(address: str) -> dict[str, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        out = {}
        for name in ("", "liveness", "readiness"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            out[name] = reply.status
        return out


async def _send(channel: grpc.aio.Channel, target: Target, payload: bytes) -> grpc.StatusCode:
    try:
        if target.method.server_streaming:
            call = channel.unary_stream(
                target.path, request_serializer=None, response_deserializer=None
            )
            async for _ in call(payload, timeout=3, metadata=target.metadata):
                pass
        else:
            unary = channel.unary_unary(
                target.path, request_serializer=None, response_deserializer=None
            )
            await unary(payload, timeout=3, metadata=target.metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_fuzzed_payloads_never_unknown_or_internal(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rng = random.Random(14)
    seeds = seed_requests()
    async with mesh(tmp_path, tiny_model_dir) as running:
        health_before = {name: await _health(a) for name, a in running.addresses.items()}
        channels = {a: grpc.aio.insecure_channel(a) for a in running.addresses.values()}
        codes: Counter[tuple[str, str]] = Counter()
        bad: list[tuple[str, str, bytes]] = []
        sem = asyncio.Semaphore(CONCURRENCY)
        started = time.monotonic()

        async def one(target: Target, payload: bytes) -> None:
            async with sem:
                code = await _send(channels[target.address], target, payload)
            codes[(target.path, code.name)] += 1
            if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                bad.append((target.path, code.name, payload))

        jobs = []
        for target in running.targets:
            request_type = target.method.input_type
            seed = seeds.get(request_type.full_name, b"")
            for payload in payloads(request_type, seed, rng, PER_METHOD):  # type: ignore[arg-type]
                jobs.append(one(target, payload))
        await asyncio.gather(*jobs)
        elapsed = time.monotonic() - started
        try:
            health_after = {name: await _health(a) for name, a in running.addresses.items()}
            # A normal call still works on every service.
            generate = channels[running.addresses["gateway"]].unary_unary(
                "/llmesh.v1.GatewayService/Generate",
                request_serializer=gateway_pb2.GenerateRequest.SerializeToString,
                response_deserializer=gateway_pb2.GenerateResponse.FromString,
            )
            reply = await generate(
                gateway_pb2.GenerateRequest(
                    input=common_pb2.GenerationInput(
                        prompt="hello", sampling=common_pb2.SamplingParams(max_tokens=2)
                    )
                ),
                timeout=30,
                metadata=(("authorization", f"Bearer {running.admin_key}"),),
            )
            remember = channels[running.addresses["memory"]].unary_unary(
                "/llmesh.v1.MemoryService/Remember",
                request_serializer=memory_pb2.MemoryServiceRememberRequest.SerializeToString,
                response_deserializer=memory_pb2.MemoryServiceRememberResponse.FromString,
            )
            stored = await remember(
                memory_pb2.MemoryServiceRememberRequest(
                    namespace="after", memory=common_pb2.MemoryDraft(text="still fine")
                ),
                timeout=10,
            )
        finally:
            for channel in channels.values():
                await channel.close(None)
    sent = sum(codes.values())
    print(f"fuzz: {sent} payloads to {len(running.targets)} methods in {elapsed:.1f}s")
    for (path, code), n in sorted(codes.items()):
        print(f"  {path} {code} {n}")
    per_method = Counter(path for path, _code in codes.elements())
    assert len(per_method) == len(running.targets)
    assert min(per_method.values()) >= PER_METHOD  # every method got its full share
    assert not bad, bad[:10]
    assert health_after == health_before
    assert reply.usage.completion_tokens >= 1 and reply.finish_reason
    assert stored.id
