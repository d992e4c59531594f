"""``google.protobuf.Duration`` fields of the contracts, read and written one way.

The contracts carry lifetimes (TTLs, leases) as ``Duration``; services work in
seconds. ``MAX_TTL_S`` is the bound the protos state for every TTL (10 years).
"""

from __future__ import annotations

from google.protobuf import duration_pb2

# 10 years of 365.25 days: the upper bound of every TTL in the contracts.
MAX_TTL_S = 315_576_000


def seconds_of(value: duration_pb2.Duration) -> float:
    """A duration in seconds (fractions kept); an unset field reads 0."""
    return value.seconds + value.nanos / 1e9


def duration(seconds: float) -> duration_pb2.Duration:
    """A ``Duration`` of ``seconds`` (rounded to the millisecond)."""
    out = duration_pb2.Duration()
    out.FromMilliseconds(round(seconds * 1000))
    return out
