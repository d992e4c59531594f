"""The kernel's native ``buf.validate`` rule checker agrees with protovalidate (field path
and rule id) on fuzzed payloads of every request type that still decode.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from e2etest.fuzz_payloads import payloads, seed_requests
from google.protobuf import message_factory

from llmesh.kernel.validation import RequestValidator
from llmesh.v1 import (
    gateway_pb2,
    inference_pb2,
    memory_pb2,
    registry_pb2,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _decoded_samples(rng: random.Random, count: int) -> list[Any]:
    """Fuzzed payloads of every request type that still decode (rule checks apply)."""
    seeds = seed_requests()
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
