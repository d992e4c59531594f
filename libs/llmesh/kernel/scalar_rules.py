"""The scalar ``buf.validate`` rules (strings, numbers, enums, durations, timestamps).

Each rule compiles once to a ``Rule`` (fails(value), rule id, message) with the rule id
and message protovalidate reports; a rule this module does not run raises
``Unsupported`` so the message type goes to the fallback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import re2  # type: ignore[import-untyped]
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import duration_pb2, timestamp_pb2

from llmesh.kernel.violations import Rule, Unsupported

_FD = pb_descriptor.FieldDescriptor

_NUMERIC = frozenset(
    {"int32", "int64", "uint32", "uint64", "sint32", "sint64"}
    | {"fixed32", "fixed64", "sfixed32", "sfixed64", "float", "double"}
)
_BOUNDS = {"gt", "gte", "lt", "lte"}
_TIMES = frozenset({"duration", "timestamp"})
SUPPORTED = {
    "string": {"min_len", "max_len", "min_bytes", "max_bytes", "pattern", "not_contains"}
    | {"in", "not_in", "example"},
    **{name: _BOUNDS | {"in", "not_in", "const", "finite", "example"} for name in _NUMERIC},
    "enum": {"defined_only", "in", "not_in", "const", "example"},
    "duration": _BOUNDS | {"example"},
    "timestamp": _BOUNDS | {"example"},
    "repeated": {"min_items", "max_items", "items"},
    "map": {"min_pairs", "max_pairs", "keys", "values"},
}
_WORDS = {
    "gt": "greater than",
    "gte": "greater than or equal to",
    "lt": "less than",
    "lte": "less than or equal to",
}


def format_value(value: Any) -> str:
    """A rule value as protovalidate's CEL ``format`` writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, timestamp_pb2.Timestamp):
        when = datetime.fromtimestamp(value.seconds, UTC) + timedelta(
            microseconds=value.nanos // 1000
        )
        text = when.isoformat(timespec="milliseconds" if value.nanos >= 1_000_000 else "seconds")
        return text.removesuffix("+00:00") + "Z"
    if isinstance(value, duration_pb2.Duration):
        micros = Decimal(value.nanos // 1000) / Decimal(1_000_000)
        return f"{value.seconds + micros:f}s"
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__iter__") and not isinstance(value, str)
    ):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _nanos(value: Any) -> int:
    return int(value.seconds) * 1_000_000_000 + int(value.nanos)


# What google.protobuf's Timestamp and Duration allow (years 1..9999; +-10000 years; nanos
# with the seconds' sign). protovalidate lets other values through to the service,
# whose ToNanoseconds()/ToDatetime() then raise ValueError: a deliberate difference.
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
_DURATION_SECONDS = 315_576_000_000


_VALID_TIME = {
    "timestamp": "must be a valid timestamp (nanos 0..999999999, years 1..9999)",
    "duration": "must be a valid duration (nanos -999999999..999999999 with the seconds' "
    "sign, at most 10000 years)",
}


def _malformed_time(kind: str, value: Any) -> bool:
    seconds, nanos = int(value.seconds), int(value.nanos)
    if kind == "timestamp":
        low, high = _TIMESTAMP_SECONDS
        return not (low <= seconds <= high and 0 <= nanos <= 999_999_999)
    return (
        abs(seconds) > _DURATION_SECONDS
        or abs(nanos) > 999_999_999
        or (seconds > 0 and nanos < 0)
        or (seconds < 0 and nanos > 0)
    )


def _bound_rules(kind: str, present: dict[str, Any]) -> list[Rule]:
    """One rule for the lower/upper bound pair, with protovalidate's combined rule id."""
    lower = next((k for k in ("gt", "gte") if k in present), None)
    upper = next((k for k in ("lt", "lte") if k in present), None)
    if lower is None and upper is None:
        return []
    as_number: Callable[[Any], Any] = _nanos if kind in _TIMES else (lambda v: v)
    lo = as_number(present[lower]) if lower else None
    hi = as_number(present[upper]) if upper else None

    def ok(v: Any) -> bool:
        n = as_number(v)
        if lower == "gt" and not n > lo:
            return False
        if lower == "gte" and not n >= lo:
            return False
        if upper == "lt" and not n < hi:
            return False
        return not (upper == "lte" and not n <= hi)

    if lower and upper:
        if hi is not None and lo is not None and hi < lo:
            raise Unsupported("exclusive range")
        rule_id = f"{kind}.{lower}_{upper}"
        message = (
            f"must be {_WORDS[lower]} {format_value(present[lower])} "
            f"and {_WORDS[upper]} {format_value(present[upper])}"
        )
    else:
        only = lower or upper
        assert only is not None
        rule_id = f"{kind}.{only}"
        message = f"must be {_WORDS[only]} {format_value(present[only])}"
    return [(lambda v: not ok(v), rule_id, message)]


def scalar_rules(kind: str, rules: Any, field: _FD) -> list[Rule]:
    """The rules of one value (a string, number, enum or duration)."""
    present = {f.name: v for f, v in rules.ListFields()}
    if kind not in SUPPORTED or set(present) - SUPPORTED[kind]:
        raise Unsupported(kind)
    out: list[Rule] = []
    if kind == "string":
        if "min_len" in present:
            n = present["min_len"]
            out.append((lambda v: len(v) < n, "string.min_len", f"must be at least {n} characters"))
        if "max_len" in present:
            m = present["max_len"]
            out.append((lambda v: len(v) > m, "string.max_len", f"must be at most {m} characters"))
        if "min_bytes" in present:
            nb = present["min_bytes"]
            out.append(
                (lambda v: len(v.encode()) < nb, "string.min_bytes", f"must be at least {nb} bytes")
            )
        if "max_bytes" in present:
            mb = present["max_bytes"]
            out.append(
                (
                    lambda v: len(v) > mb // 4 and len(v.encode()) > mb,
                    "string.max_bytes",
                    f"must be at most {mb} bytes",
                )
            )
        if "pattern" in present:
            pattern = present["pattern"]
            regex = re2.compile(pattern)
            out.append(
                (
                    lambda v: regex.search(v) is None,
                    "string.pattern",
                    f"does not match regex pattern `{pattern}`",
                )
            )
        if "not_contains" in present:
            needle = present["not_contains"]
            out.append(
                (lambda v: needle in v, "string.not_contains", f"contains substring `{needle}`")
            )
    elif kind == "enum" and present.get("defined_only"):
        assert field.enum_type is not None
        defined = frozenset(field.enum_type.values_by_number)
        out.append(
            (
                lambda v: v not in defined,
                "enum.defined_only",
                "value must be one of the defined enum values",
            )
        )
    elif kind in _NUMERIC or kind in _TIMES:
        bounds = _bound_rules(kind, present)
        if kind in _TIMES:
            # Out of its declared bounds, a malformed value reports what protovalidate
            # reports (the bound); only one within them is reported as {kind}.valid.
            out.append(
                (
                    lambda v: _malformed_time(kind, v) and not any(bad(v) for bad, _, _ in bounds),
                    f"{kind}.valid",
                    _VALID_TIME[kind],
                )
            )
        out.extend(bounds)
        if present.get("finite"):
            out.append((lambda v: not math.isfinite(v), f"{kind}.finite", "must be finite"))
    if "const" in present:
        const = present["const"]
        out.append((lambda v: v != const, f"{kind}.const", f"must equal {format_value(const)}"))
    if "in" in present:
        allowed = frozenset(present["in"])
        text = format_value(list(present["in"]))
        out.append((lambda v: v not in allowed, f"{kind}.in", f"must be in list {text}"))
    if "not_in" in present:
        banned = frozenset(present["not_in"])
        text_n = format_value(list(present["not_in"]))
        out.append((lambda v: v in banned, f"{kind}.not_in", f"must not be in list {text_n}"))
    return out
