"""Malformed Timestamp/Duration values: the bound protovalidate reports when out of the
declared bounds (as Node's @bufbuild/protovalidate does), ``{kind}.valid`` otherwise."""

from __future__ import annotations

from google.protobuf import duration_pb2

from llmesh.kernel.validation import RequestValidator
from llmesh.v1 import common_pb2, gateway_pb2


def _violations(ttl: duration_pb2.Duration) -> list[tuple[str, str]]:
    request = gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text="x", ttl=ttl))
    return [(v.field, v.reason) for v in RequestValidator().violations(request)]


def test_a_malformed_duration_past_its_bounds_reports_the_bound() -> None:
    # 10^12 s is past Duration's 10,000 years and past the TTL's upper bound.
    (violation,) = _violations(duration_pb2.Duration(seconds=10**12))
    assert violation[0] == "memory.ttl" and violation[1].startswith("duration.")
    assert violation[1] != "duration.valid"


def test_a_malformed_duration_within_its_bounds_is_reported_invalid() -> None:
    assert _violations(duration_pb2.Duration(seconds=5, nanos=-5)) == [
        ("memory.ttl", "duration.valid")
    ]


def test_a_well_formed_duration_within_its_bounds_passes() -> None:
    assert _violations(duration_pb2.Duration(seconds=5, nanos=5)) == []
