"""Property-based requests (hypothesis) to every RPC of every service: each must end in a
status other than ``UNKNOWN`` or ``INTERNAL`` whatever the request holds (strings of
extreme sizes and invalid UTF-8, negative and huge numbers, unknown enum values, NaN,
deep and long nested fields, unknown fields, random bytes: ``fuzz.strategies``), and
after each RPC's run every service is still SERVING and a normal call on each works.

Gateway calls carry an admin key, so they reach past authentication into every handler
(``tests/security`` covers the calls without one). Examples per RPC: the hypothesis
profile (``fuzz/conftest.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from e2etest.fuzz_payloads import seed_requests
from google.protobuf import duration_pb2
from hypothesis import given
from hypothesis import strategies as st

from fuzz.conftest import fuzz_settings
from fuzz.harness import BAD_CODES, Mesh, health_sync, normal_calls_work, send_sync
from fuzz.report import record
from fuzz.strategies import requests
from llmesh.testing.rpc import error_details
from llmesh.v1 import common_pb2, gateway_pb2, inference_pb2, memory_pb2, registry_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SERVING = 1
CALL_TIMEOUT_S = 2.0
# Streams that never end on their own (a watch) are cut sooner: DEADLINE_EXCEEDED is fine.
ENDLESS = {"/llmesh.v1.RegistryService/WatchWorkers": 0.5}
SEEDS = seed_requests()
PATHS = [
    f"/{service.full_name}/{method.name}"
    for module in (gateway_pb2, registry_pb2, memory_pb2, inference_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
_CODES: dict[str, Counter[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    record(
        "properties",
        {
            "examples_per_rpc": fuzz_settings().max_examples,
            "rpcs": len(_CODES),
            "inputs": sum(sum(c.values()) for c in _CODES.values()),
            "codes": {path: dict(sorted(c.items())) for path, c in sorted(_CODES.items())},
            "unknown_or_internal": sum(c[b.name] for c in _CODES.values() for b in BAD_CODES),
        },
    )


@pytest.mark.parametrize("path", PATHS, ids=[p.strip("/").split(".")[-1] for p in PATHS])
def test_hostile_requests_never_unknown_or_internal(fuzz_mesh: Mesh, path: str) -> None:
    target = next(t for t in fuzz_mesh.targets if t.path == path)
    seed = SEEDS.get(target.method.input_type.full_name, b"")
    codes = _CODES.setdefault(path, Counter())
    with grpc.insecure_channel(target.address) as channel:

        @fuzz_settings()
        @given(payload=requests(target.method.input_type, seed))
        def check(payload: bytes) -> None:
            timeout_s = ENDLESS.get(path, CALL_TIMEOUT_S)
            error = send_sync(channel, target, payload, timeout_s=timeout_s)
            code = grpc.StatusCode.OK if error is None else error.code()  # type: ignore[attr-defined]
            codes[code.name] += 1
            assert code not in BAD_CODES, (
                f"{path} answered {code.name}: {error.details()}"  # type: ignore[union-attr]
            )

        check()
    # Every service survived the run: SERVING, and a normal call on each works.
    for name, address in fuzz_mesh.addresses.items():
        assert health_sync(address) == {"": SERVING, "liveness": SERVING, "readiness": SERVING}, (
            name
        )
    normal_calls_work(fuzz_mesh)


# What the fuzzing found, kept as fixed cases: the request and the field it must name.
FOUND = [
    # make fuzz, 2026-11-29: a Timestamp with nanos past 999999999 (here 2^31-1) passed
    # validation (protovalidate accepts it) and ToNanoseconds() raised: INTERNAL.
    (
        "/llmesh.v1.MemoryService/Forget",
        SEEDS["llmesh.v1.MemoryServiceForgetRequest"] + b'"\x06\x10\xff\xff\xff\xff\x07',
        "created_before",
        "timestamp.valid",
    ),
    # The same kind of value in a Duration (negative nanos with positive seconds).
    (
        "/llmesh.v1.GatewayService/Remember",
        gateway_pb2.RememberRequest(
            memory=common_pb2.MemoryDraft(text="x", ttl=duration_pb2.Duration(seconds=5, nanos=-5))
        ).SerializeToString(),
        "memory.ttl",
        "duration.valid",
    ),
]


@pytest.mark.parametrize(("path", "payload", "field", "rule"), FOUND)
def test_found_cases_are_invalid_argument_naming_the_field(
    fuzz_mesh: Mesh, path: str, payload: bytes, field: str, rule: str
) -> None:
    target = next(t for t in fuzz_mesh.targets if t.path == path)
    with grpc.insecure_channel(target.address) as channel:
        error = send_sync(channel, target, payload, timeout_s=10)
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    violations = error_details(error)["bad_request"].field_violations
    assert [(v.field, v.reason) for v in violations] == [(field, rule)]


HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=4000)
METADATA = st.lists(
    st.one_of(
        st.tuples(st.just("authorization"), HEADER_TEXT),
        st.tuples(st.just("authorization"), HEADER_TEXT.map(lambda s: "Bearer " + s)),
        st.tuples(st.just("authorization"), HEADER_TEXT.map(lambda s: "Bearer lmk_" + s)),
        st.tuples(st.just("x-request-id"), HEADER_TEXT),
        st.tuples(st.just("traceparent"), HEADER_TEXT),
        st.tuples(st.just("tracestate"), HEADER_TEXT),
        st.tuples(st.just("grpc-timeout-ish"), HEADER_TEXT),
        st.tuples(st.sampled_from(["x-fuzz-bin", "authorization-bin"]), st.binary(max_size=512)),
    ),
    max_size=6,
)
HEADER_TARGETS = [
    "/llmesh.v1.GatewayService/ListModels",
    "/llmesh.v1.GatewayService/GenerateStream",
    "/llmesh.v1.AdminService/ListWorkers",
    "/llmesh.v1.MemoryService/Recall",
    "/llmesh.v1.RegistryService/ListWorkers",
    "/llmesh.v1.InferenceService/Stats",
]


@pytest.mark.parametrize("path", HEADER_TARGETS, ids=[p.split(".")[-1] for p in HEADER_TARGETS])
def test_hostile_metadata_never_unknown_or_internal(fuzz_mesh: Mesh, path: str) -> None:
    """Credentials, request ids and trace headers of any shape (the kernel and the
    gateway's auth parse them): never UNKNOWN or INTERNAL, the service goes on."""
    target = next(t for t in fuzz_mesh.targets if t.path == path)
    seed = SEEDS.get(target.method.input_type.full_name, b"")
    codes = _CODES.setdefault(f"{path} (metadata)", Counter())
    with grpc.insecure_channel(target.address) as channel:

        @fuzz_settings()
        @given(metadata=METADATA)
        def check(metadata: list[tuple[str, Any]]) -> None:
            error = send_sync(
                channel, target, seed, timeout_s=CALL_TIMEOUT_S, metadata=tuple(metadata)
            )
            code = grpc.StatusCode.OK if error is None else error.code()  # type: ignore[attr-defined]
            codes[code.name] += 1
            assert code not in BAD_CODES, (
                f"{path} answered {code.name}: {error.details()}"  # type: ignore[union-attr]
            )

        check()
    normal_calls_work(fuzz_mesh)
