"""Fuzz every method of every service with random and mutated wire bytes.

A small mesh runs in this process on real parts: registry (in memory), an inference
worker on the tiny model, memory on SQLite, and the gateway in front of them (admin
key). Each method gets ``PER_METHOD`` payloads sent as raw bytes: mutations of a valid
request (bit flips, truncation, appended junk), invalid UTF-8 in each string field,
huge and overlong varints and out-of-range integers in each number field, lengths that
run past the end, wrong wire types, and plain random bytes. Nothing may come back
``UNKNOWN`` or ``INTERNAL``; health is unchanged and a normal call still works.

A second test decodes the same kind of payloads locally and holds the kernel's native
rule checker to protovalidate's answers (field path and rule id).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import duration_pb2, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.validation import RequestValidator
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

MODEL = "tiny-llama-test"
PER_METHOD = int(os.environ.get("LLMESH_FUZZ_PER_METHOD", "100"))
CONCURRENCY = 16
_FD = pb_descriptor.FieldDescriptor
_TEXT = (_FD.TYPE_STRING,)
_VARINTS = (
    _FD.TYPE_INT32,
    _FD.TYPE_INT64,
    _FD.TYPE_UINT32,
    _FD.TYPE_UINT64,
    _FD.TYPE_ENUM,
    _FD.TYPE_BOOL,
    _FD.TYPE_SINT32,
    _FD.TYPE_SINT64,
)


# ----- payloads ----------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


INVALID_UTF8 = (b"\xff", b"ok\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80abc")
HUGE_INTS = (2**31, 2**32 + 5, 2**63, 2**64 - 1, (1 << 64) - 2**31)


def _field_payloads(field: _FD, rng: random.Random) -> list[bytes]:
    """Hostile encodings of one field."""
    n = field.number
    out = [
        _tag(n, 5) + rng.randbytes(4),  # a wire type the field does not have
        _tag(n, 2) + _varint(2**40) + b"x",  # a length running past the end
    ]
    if field.type in _TEXT:
        out += [_length_delimited(n, bad) for bad in INVALID_UTF8]
        out.append(_length_delimited(n, b"a\x00b"))  # valid UTF-8 with a NUL
        out.append(_length_delimited(n, b"x" * rng.choice((300, 70_000))))
    elif field.type in _VARINTS:
        out += [_tag(n, 0) + _varint(v) for v in HUGE_INTS]
        out.append(_tag(n, 0) + b"\xff" * 10 + b"\x01")  # an 11-byte varint
        out.append(_tag(n, 0) + b"\xff\xff")  # a varint cut short
    elif field.type in (_FD.TYPE_FLOAT, _FD.TYPE_FIXED32, _FD.TYPE_SFIXED32):
        out += [_tag(n, 5) + bytes.fromhex(h) for h in ("0000c07f", "0000807f", "ffff7fff")]
    elif field.type in (_FD.TYPE_DOUBLE, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64):
        out.append(_tag(n, 1) + bytes.fromhex("000000000000f87f"))
    elif field.type == _FD.TYPE_MESSAGE:
        out.append(_length_delimited(n, rng.randbytes(rng.randint(1, 24))))
        out.append(_length_delimited(n, _tag(1, 0) + _varint(2**63)))
        out.append(_length_delimited(n, _tag(1, 2) + b"\x05\xff\xfe"))
    return out


def _mutate(seed: bytes, rng: random.Random) -> bytes:
    data = bytearray(seed or b"\x00")
    choice = rng.randrange(4)
    if choice == 0:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 1:
        return bytes(data[: rng.randrange(len(data) + 1)])
    if choice == 2:
        return bytes(data) + rng.randbytes(rng.randint(1, 16))
    return rng.randbytes(rng.randint(0, 64))


def payloads(
    descriptor: pb_descriptor.Descriptor, seed: bytes, rng: random.Random, count: int
) -> list[bytes]:
    """``count`` hostile payloads for a request type: field-aware first, then mutations."""
    aware = [p for field in descriptor.fields for p in _field_payloads(field, rng)]
    rng.shuffle(aware)
    out = [seed + p for p in aware[: count // 2]]
    while len(out) < count:
        out.append(_mutate(seed, rng))
    return out


# ----- the mesh ----------------------------------------------------------------------


def _seeds() -> dict[str, bytes]:
    """A valid request per method (by message type name), mutated by the fuzzer."""
    hours = duration_pb2.Duration(seconds=3600)
    sampling = common_pb2.SamplingParams(max_tokens=2, temperature=0)
    samples: list[Any] = [
        gateway_pb2.GenerateRequest(prompt="hello", sampling=sampling),
        gateway_pb2.GenerateStreamRequest(prompt="hello", sampling=sampling),
        gateway_pb2.ChatRequest(session_id="fuzz", message="hi", sampling=sampling),
        gateway_pb2.EmbedRequest(texts=["a"]),
        gateway_pb2.RememberRequest(text="fact", metadata={"k": "v"}, ttl=hours),
        gateway_pb2.RecallRequest(query="fact"),
        gateway_pb2.ForgetRequest(ids=["m1"]),
        gateway_pb2.GetSessionRequest(session_id="fuzz"),
        gateway_pb2.ListSessionsRequest(page_size=5),
        gateway_pb2.DeleteSessionRequest(session_id="nope"),
        gateway_pb2.ListWorkersRequest(),
        gateway_pb2.DrainWorkerRequest(worker_id="fuzz-other"),
        gateway_pb2.LoadModelRequest(model="no-such-model"),
        gateway_pb2.UnloadModelRequest(model="no-such-model"),
        gateway_pb2.CreateApiKeyRequest(
            name="fuzz", role=gateway_pb2.ROLE_USER, tenant="fuzz", ttl=hours
        ),
        gateway_pb2.RevokeApiKeyRequest(key_id="abc123"),
        gateway_pb2.ListApiKeysRequest(include_revoked=True),
        gateway_pb2.ListAuditEventsRequest(page_size=5),
        registry_pb2.RegisterRequest(
            worker=common_pb2.WorkerInfo(
                worker_id="fuzz-other",
                address="127.0.0.1:1",
                state=common_pb2.WORKER_STATE_UNHEALTHY,
            )
        ),
        registry_pb2.HeartbeatRequest(worker_id="fuzz-other", lease_id="l"),
        registry_pb2.DeregisterRequest(worker_id="fuzz-other"),
        registry_pb2.RegistryServiceListWorkersRequest(model=MODEL),
        registry_pb2.WatchWorkersRequest(since_revision=1),
        registry_pb2.SetWorkerStateRequest(
            worker_id="fuzz-other", state=common_pb2.WORKER_STATE_DRAINING
        ),
        memory_pb2.AppendMessagesRequest(
            namespace="fuzz",
            session_id="s",
            messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="x")],
            idempotency_key="k",
        ),
        memory_pb2.GetAppendRequest(namespace="fuzz", idempotency_key="k"),
        memory_pb2.MemoryServiceGetSessionRequest(namespace="fuzz", session_id="s"),
        memory_pb2.MemoryServiceListSessionsRequest(namespace="fuzz"),
        memory_pb2.MemoryServiceDeleteSessionRequest(namespace="fuzz", session_id="nope"),
        memory_pb2.MemoryServiceRememberRequest(namespace="fuzz", text="fact", ttl=hours),
        memory_pb2.MemoryServiceRecallRequest(namespace="fuzz", query="fact"),
        memory_pb2.MemoryServiceForgetRequest(namespace="fuzz", ids=["m1"]),
        inference_pb2.InferenceServiceGenerateRequest(prompt="hello", sampling=sampling),
        inference_pb2.InferenceServiceEmbedRequest(texts=["a"]),
        inference_pb2.InferenceServiceLoadModelRequest(model="no-such-model"),
        inference_pb2.InferenceServiceUnloadModelRequest(model="no-such-model"),
        inference_pb2.InferenceServiceListModelsRequest(),
        inference_pb2.StatsRequest(),
    ]
    return {m.DESCRIPTOR.full_name: m.SerializeToString() for m in samples}


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
    seeds = _seeds()
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
                    prompt="hello", sampling=common_pb2.SamplingParams(max_tokens=2)
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
                memory_pb2.MemoryServiceRememberRequest(namespace="after", text="still fine"),
                timeout=10,
            )
        finally:
            for channel in channels.values():
                await channel.close(None)
    sent = sum(codes.values())
    print(f"fuzz: {sent} payloads to {len(running.targets)} methods in {elapsed:.1f}s")
    for (path, code), n in sorted(codes.items()):
        print(f"  {path} {code} {n}")
    assert sent >= 500
    assert not bad, bad[:10]
    assert health_after == health_before
    assert reply.finish_reason or reply.text is not None
    assert stored.id


def _decoded_samples(rng: random.Random, count: int) -> list[Any]:
    """Fuzzed payloads of every request type that still decode (rule checks apply)."""
    seeds = _seeds()
    out: list[Any] = []
    for module in (gateway_pb2, registry_pb2, memory_pb2, inference_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                descriptor = method.input_type
                cls: Callable[[], Any] = message_factory.GetMessageClass(descriptor)
                seed = seeds.get(descriptor.full_name, b"")
                for payload in payloads(descriptor, seed, rng, count):
                    try:
                        out.append(cls().FromString(payload))
                    except Exception:
                        continue
    return out


def test_native_rules_agree_with_protovalidate() -> None:
    validator = RequestValidator()
    rng = random.Random(7)
    compared = 0
    for message in _decoded_samples(rng, 40):
        native = validator.violations(message)
        try:
            reference = validator._protovalidate(message)
        except Exception:  # protovalidate itself fails (e.g. huge Durations)
            continue
        if any(v.rule_id == "unrepresentable" for v in reference):
            continue  # a value protovalidate's CEL cannot represent (the native check can)
        if len(native) >= 100:
            continue  # the native checker stops at 100 violations
        want = sorted((v.field, v.rule_id) for v in reference)
        got = sorted((v.field, v.reason) for v in native)
        # Oversized lists: the native checker reports the size, not each item too.
        sized = {v.field for v in native if v.reason.endswith(("max_items", "max_pairs"))}
        want = [w for w in want if not any(w[0].startswith(f"{s}[") for s in sized)]
        assert got == want, (type(message).__name__, message)
        compared += 1
    assert compared > 300
