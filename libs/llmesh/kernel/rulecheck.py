"""The standard ``buf.validate`` rules run as plain Python, compiled once per message type.

``protovalidate`` (Python) evaluates every rule as a CEL program in an interpreter:
about 0.2 ms per rule and per list item, so a ``ChatRequest`` costs ~15 ms and a
``Forget`` with 1,000 ids ~200 ms, and it raises ``ValueError`` on a Duration beyond
CEL's range. The rules our protos use (string sizes and patterns, number and
duration and timestamp ranges, enums, repeated and map sizes and items, required fields and
oneofs) are run here instead, reporting the same field path, rule id and message as
protovalidate. A message type with any other rule (custom CEL, well-known formats)
goes to ``fallback`` (protovalidate). The tests check that both agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import re2  # type: ignore[import-untyped]
from buf.validate import validate_pb2
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf import message as pb_message

_FD = pb_descriptor.FieldDescriptor


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: field path (protobuf-es ``pathToString`` form), rule id, message."""

    field: str
    rule_id: str
    message: str


Out = list[Violation]
# Violations reported at most per request (a list of 100,000 bad ids gives 100).
MAX_VIOLATIONS = 100
# A compiled check: (value, field path, out) -> appends the violations of ``value``.
Check = Callable[[Any, str, Out], None]
# (fails(value), rule id, message) of one scalar rule.
Rule = tuple[Callable[[Any], bool], str, str]

_NUMERIC = frozenset(
    {"int32", "int64", "uint32", "uint64", "sint32", "sint64"}
    | {"fixed32", "fixed64", "sfixed32", "sfixed64", "float", "double"}
)
_BOUNDS = {"gt", "gte", "lt", "lte"}
_TIMES = frozenset({"duration", "timestamp"})
_SUPPORTED = {
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


class Unsupported(Exception):
    """A rule this module does not run: the message type goes to the fallback."""


def subscript(key: object) -> str:
    """``["k"]`` / ``[3]`` / ``[true]``: a map key or list index in a field path."""
    if isinstance(key, str):
        escaped = (
            key.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
        )
        return f'["{escaped}"]'
    if isinstance(key, bool):
        return "[true]" if key else "[false]"
    return f"[{key}]"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def format_value(value: Any) -> str:
    """A rule value as protovalidate's CEL ``format`` writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, timestamp_pb2.Timestamp):
        when = datetime.fromtimestamp(value.seconds, UTC)
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


def _scalar_rules(kind: str, rules: Any, field: _FD) -> list[Rule]:
    """The rules of one value (a string, number, enum or duration)."""
    present = {f.name: v for f, v in rules.ListFields()}
    if kind not in _SUPPORTED or set(present) - _SUPPORTED[kind]:
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
        out.extend(_bound_rules(kind, present))
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


def _run_rules(rules: list[Rule]) -> Check:
    def check(value: Any, path: str, out: Out) -> None:
        for fails, rule_id, message in rules:
            if fails(value):
                out.append(Violation(path, rule_id, message))

    return check


def _sized(size: list[Rule], items: Check | None) -> Check:
    """Size rules first; the items are checked only when the size is right (so an
    oversized list costs one comparison, not a pass over every item)."""

    def check(value: Any, path: str, out: Out) -> None:
        before = len(out)
        for fails, rule_id, message in size:
            if fails(value):
                out.append(Violation(path, rule_id, message))
        if items is not None and len(out) == before:
            items(value, path, out)

    return check


def _chain(checks: list[Check]) -> Check | None:
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]

    def check(value: Any, path: str, out: Out) -> None:
        for one in checks:
            one(value, path, out)

    return check


def _required(path: str, out: Out) -> None:
    out.append(Violation(path, "required", "value is required"))


def _field_rules(field: _FD) -> Any:
    options = field.GetOptions()
    if not options.HasExtension(validate_pb2.field):
        return None
    rules = options.Extensions[validate_pb2.field]
    if rules.cel or rules.cel_expression:
        raise Unsupported("custom CEL")
    return rules


class RuleChecker:
    """``violations(message)``: every ``buf.validate`` rule the message breaks."""

    def __init__(self, fallback: Callable[[pb_message.Message], list[Violation]]) -> None:
        # ``fallback`` answers for message types with rules this module does not run.
        self._fallback = fallback
        self._plans: dict[str, Check | None] = {}

    def violations(self, message: pb_message.Message) -> list[Violation]:
        out: Out = []
        plan = self._plan(message.DESCRIPTOR)  # type: ignore[arg-type]
        if plan is not None:
            plan(message, "", out)
        return out

    def _plan(self, descriptor: pb_descriptor.Descriptor) -> Check | None:
        name = descriptor.full_name
        if name in self._plans:
            return self._plans[name] or None
        # A recursive type refers to itself through this placeholder until compiled.
        self._plans[name] = lambda m, p, o: self._plans[name](m, p, o)  # type: ignore[misc]  # noqa: PLW0108
        try:
            plan = self._compile(descriptor)
        except Unsupported:
            plan = self._delegate
        self._plans[name] = plan
        return plan

    def _delegate(self, message: Any, path: str, out: Out) -> None:
        for v in self._fallback(message):
            field = v.field if not path else (f"{path}.{v.field}" if v.field else path)
            out.append(Violation(field, v.rule_id, v.message))

    def _compile(self, descriptor: pb_descriptor.Descriptor) -> Check | None:
        options = descriptor.GetOptions()
        if options.HasExtension(validate_pb2.message):
            rules = options.Extensions[validate_pb2.message]
            if rules.cel or rules.cel_expression or rules.oneof:
                raise Unsupported("message rules")
        checks: list[Check] = []
        for oneof in descriptor.oneofs:
            oneof_options = oneof.GetOptions()
            if (
                oneof_options.HasExtension(validate_pb2.oneof)
                and oneof_options.Extensions[validate_pb2.oneof].required
            ):
                checks.append(_oneof_required(oneof.name))
        for field in descriptor.fields:
            check = self._field(field)
            if check is not None:
                checks.append(check)
        return _chain(checks)

    def _field(self, field: _FD) -> Check | None:
        rules = _field_rules(field)
        ignore = rules.ignore if rules is not None else validate_pb2.IGNORE_UNSPECIFIED
        if ignore == validate_pb2.IGNORE_ALWAYS:
            return None
        required = rules is not None and rules.required
        skip_zero = ignore == validate_pb2.IGNORE_IF_ZERO_VALUE
        value = self._value(field, rules)
        if value is None and not required:
            return None
        name = field.name
        present: Callable[[Any], bool]
        if field.is_repeated:
            present = lambda m: bool(getattr(m, name))  # noqa: E731
        elif field.has_presence:
            present = lambda m: m.HasField(name)  # noqa: E731
        else:
            default = field.default_value
            present = lambda m: getattr(m, name) != default  # noqa: E731
        # Rules still apply to an unset list or plain scalar (an empty string has a
        # length), never to an unset optional or message field.
        check_unset = not (required or skip_zero or field.has_presence)

        def check(m: Any, path: str, out: Out) -> None:
            if not present(m):
                if required:
                    _required(_join(path, name), out)
                    return
                if not check_unset:
                    return
            if value is not None:
                value(getattr(m, name), _join(path, name), out)

        return check

    def _value(self, field: _FD, rules: Any, *, element: bool = False) -> Check | None:
        """Check of the field's value (the whole list or map for repeated fields)."""
        message_type = field.message_type
        if field.is_repeated and not element:
            if message_type is not None and message_type.GetOptions().map_entry:
                return self._map(field, rules)
            return self._list(field, rules)
        kind = rules.WhichOneof("type") if rules is not None else None
        checks: list[Check] = []
        if kind is not None:
            checks.append(_run_rules(_scalar_rules(kind, getattr(rules, kind), field)))
        elif message_type is not None and not message_type.full_name.startswith("google."):
            sub = self._plan(message_type)
            if sub is not None:
                checks.append(sub)
        return _chain(checks)

    def _list(self, field: _FD, rules: Any) -> Check | None:
        kind = rules.WhichOneof("type") if rules is not None else None
        if kind not in (None, "repeated"):
            raise Unsupported(f"{kind} rules on a repeated field")
        size: list[Rule] = []
        item_rules = None
        if kind == "repeated":
            r = rules.repeated
            if {f.name for f, _ in r.ListFields()} - _SUPPORTED["repeated"]:
                raise Unsupported("repeated rules")
            if r.HasField("min_items"):
                n = r.min_items
                size.append(
                    (
                        lambda v: len(v) < n,
                        "repeated.min_items",
                        f"must contain at least {n} item(s)",
                    )
                )
            if r.HasField("max_items"):
                mx = r.max_items
                size.append(
                    (
                        lambda v: len(v) > mx,
                        "repeated.max_items",
                        f"must contain no more than {mx} item(s)",
                    )
                )
            item_rules = r.items if r.HasField("items") else None
        item = self._element(field, item_rules)
        check_items: Check | None = None
        if item is not None:

            def check_items(v: Any, path: str, out: Out) -> None:
                for i, x in enumerate(v):
                    if len(out) >= MAX_VIOLATIONS:
                        return
                    item(x, f"{path}[{i}]", out)

        return _sized(size, check_items) if size else check_items

    def _map(self, field: _FD, rules: Any) -> Check | None:
        kind = rules.WhichOneof("type") if rules is not None else None
        if kind not in (None, "map"):
            raise Unsupported(f"{kind} rules on a map field")
        entry = field.message_type
        assert entry is not None
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        size: list[Rule] = []
        key_rules = value_rules = None
        if kind == "map":
            r = rules.map
            if {f.name for f, _ in r.ListFields()} - _SUPPORTED["map"]:
                raise Unsupported("map rules")
            if r.HasField("min_pairs"):
                n = r.min_pairs
                size.append(
                    (lambda v: len(v) < n, "map.min_pairs", f"map must be at least {n} entries")
                )
            if r.HasField("max_pairs"):
                mx = r.max_pairs
                size.append(
                    (lambda v: len(v) > mx, "map.max_pairs", f"map must be at most {mx} entries")
                )
            key_rules = r.keys if r.HasField("keys") else None
            value_rules = r.values if r.HasField("values") else None
        key_check = self._element(key_field, key_rules)
        value_check = self._element(value_field, value_rules)
        check_entries: Check | None = None
        if key_check is not None or value_check is not None:

            def check_entries(v: Any, path: str, out: Out) -> None:
                for k, x in v.items():
                    if len(out) >= MAX_VIOLATIONS:
                        return
                    at = path + subscript(k)
                    if key_check is not None:
                        key_check(k, at, out)
                    if value_check is not None:
                        value_check(x, at, out)

        return _sized(size, check_entries) if size else check_entries

    def _element(self, field: _FD, rules: Any) -> Check | None:
        if rules is not None and (rules.cel or rules.cel_expression):
            raise Unsupported("custom CEL on items")
        if rules is not None and rules.ignore == validate_pb2.IGNORE_ALWAYS:
            return None
        value = self._value(field, rules, element=True)
        if value is None:
            return None
        if rules is not None and rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE:
            default = field.default_value if field.message_type is None else None

            def skip_zero(v: Any, path: str, out: Out) -> None:
                if v != default:
                    value(v, path, out)

            return skip_zero
        return value


def _oneof_required(name: str) -> Check:
    def check(m: Any, path: str, out: Out) -> None:
        if m.WhichOneof(name) is None:
            out.append(
                Violation(_join(path, name), "required", "exactly one field is required in oneof")
            )

    return check
