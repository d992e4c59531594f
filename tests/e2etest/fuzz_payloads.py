"""Hostile request payloads for the contract fuzz tests: for each request type, a valid
seed request (``seed_requests``) and ``payloads`` made from it -- invalid UTF-8 in string fields,
huge and overlong varints and out-of-range integers in number fields, lengths that run
past the end, wrong wire types, bit flips, truncation, junk and plain random bytes.
"""

from __future__ import annotations

import random
from typing import Any

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import duration_pb2

from llmesh.v1 import (
    common_pb2,
    gateway_pb2,
    inference_pb2,
    memory_pb2,
    registry_pb2,
)

MODEL = "tiny-llama-test"
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


def seed_requests() -> dict[str, bytes]:
    """A valid request per method (by message type name), mutated by the fuzzer."""
    hours = duration_pb2.Duration(seconds=3600)
    sampling = common_pb2.SamplingParams(max_tokens=2, temperature=0)
    samples: list[Any] = [
        gateway_pb2.GenerateRequest(
            input=common_pb2.GenerationInput(prompt="hello", sampling=sampling)
        ),
        gateway_pb2.GenerateStreamRequest(
            input=common_pb2.GenerationInput(prompt="hello", sampling=sampling)
        ),
        gateway_pb2.ChatRequest(session_id="fuzz", message="hi", sampling=sampling),
        gateway_pb2.EmbedRequest(texts=["a"]),
        gateway_pb2.RememberRequest(
            memory=common_pb2.MemoryDraft(
                text="fact", metadata=common_pb2.Metadata(entries={"k": "v"}), ttl=hours
            )
        ),
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
        memory_pb2.MemoryServiceRememberRequest(
            namespace="fuzz", memory=common_pb2.MemoryDraft(text="fact", ttl=hours)
        ),
        memory_pb2.MemoryServiceRecallRequest(namespace="fuzz", query="fact"),
        memory_pb2.MemoryServiceForgetRequest(namespace="fuzz", ids=["m1"]),
        inference_pb2.InferenceServiceGenerateRequest(
            input=common_pb2.GenerationInput(prompt="hello", sampling=sampling)
        ),
        inference_pb2.InferenceServiceEmbedRequest(texts=["a"]),
        inference_pb2.InferenceServiceLoadModelRequest(model="no-such-model"),
        inference_pb2.InferenceServiceUnloadModelRequest(model="no-such-model"),
        inference_pb2.InferenceServiceListModelsRequest(),
        inference_pb2.StatsRequest(),
    ]
    return {m.DESCRIPTOR.full_name: m.SerializeToString() for m in samples}
