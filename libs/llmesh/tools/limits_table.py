"""The field-limits table of ``docs/api.md``, generated from the protos' buf.validate rules.

Run as ``python -m llmesh.tools.limits_table`` to rewrite the table between the
``<!-- limits:begin -->`` and ``<!-- limits:end -->`` markers; a test fails when the
page and the protos disagree. One row per field that carries a rule, read from the
compiled descriptors (the same rules the kernel and the Node client enforce).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buf.validate import validate_pb2
from google.protobuf import descriptor as pb_descriptor

from llmesh.kernel.scalar_rules import format_value

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "api.md"
BEGIN, END = "<!-- limits:begin -->", "<!-- limits:end -->"
_RANGE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
# Patterns of free text, in words (the rule id is still ``string.pattern``).
KNOWN_PATTERNS = {
    "^[^\\x00]*$": "no NUL (U+0000)",
    "^[^\\x00]*[^\\s\\x00][^\\x00]*$": "not blank; no NUL (U+0000)",
    "^[^\\x00]{1,128}$": "1..128 chars; no NUL (U+0000)",
}


def _span(low: Any, high: Any, unit: str) -> str:
    if low is not None and high is not None:
        return f"{format_value(low)}..{format_value(high)}{unit}"
    if high is not None:
        return f"at most {format_value(high)}{unit}"
    return f"at least {format_value(low)}{unit}"


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def describe(rules: Any) -> list[str]:
    """Human phrases for one ``FieldRules`` (or the rules of list items / map keys)."""
    out: list[str] = []
    if rules.required:
        out.append("required")
    if rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE:
        out.append("may be empty")
    kind = rules.WhichOneof("type")
    if kind is None:
        return out
    typed = getattr(rules, kind)
    present = {f.name: v for f, v in typed.ListFields()}
    pairs = (
        ("min_len", "max_len", " chars"),
        ("min_bytes", "max_bytes", " bytes"),
        ("min_items", "max_items", " items"),
        ("min_pairs", "max_pairs", " pairs"),
    )
    for low, high, unit in pairs:
        if low in present or high in present:
            out.append(_span(present.get(low), present.get(high), unit))
    bounds = {k: present[k] for k in _RANGE if k in present}
    if {"gte", "lte"} <= set(bounds) and len(bounds) == 2:
        out.append(_span(bounds["gte"], bounds["lte"], ""))
    else:
        out += [f"{_RANGE[k]} {format_value(v)}" for k, v in bounds.items()]
    if present.get("finite"):
        out.append("finite")
    if present.get("defined_only"):
        out.append("a defined value")
    if "not_in" in present:
        out.append(f"not {', '.join(format_value(v) for v in present['not_in'])}")
    if "in" in present:
        out.append(f"one of {', '.join(format_value(v) for v in present['in'])}")
    if "pattern" in present:
        pattern = present["pattern"]
        out.append(KNOWN_PATTERNS.get(pattern) or f"matches {_code(pattern)}")
    for name, label in (("items", "each"), ("keys", "keys"), ("values", "values")):
        if name in present:
            out.append(f"{label}: {', '.join(describe(present[name]))}")
    return out


def _has_rules(message: pb_descriptor.Descriptor) -> bool:
    if any(f.GetOptions().HasExtension(validate_pb2.field) for f in message.fields):
        return True
    return any(o.GetOptions().HasExtension(validate_pb2.oneof) for o in message.oneofs)


def _inputs(files: list[pb_descriptor.FileDescriptor]) -> set[str]:
    """Full names of the messages a request can contain (method inputs and below)."""
    todo = [m.input_type for f in files for s in f.services_by_name.values() for m in s.methods]
    seen: set[str] = set()
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        todo += [f.message_type for f in message.fields if f.message_type is not None]
    return seen


def rows(files: list[pb_descriptor.FileDescriptor]) -> list[tuple[str, str, str]]:
    """``(message, field, rules)`` for every field with a rule, in file order. A field
    of a request whose message type carries rules of its own (a shared ``Metadata``,
    ``MemoryDraft``, ``GenerationInput`` ...) says so, so the reader finds its limits."""
    inputs = _inputs(files)
    out: list[tuple[str, str, str]] = []
    for file in files:
        for message in file.message_types_by_name.values():
            for oneof in message.oneofs:
                oneof_options = oneof.GetOptions()
                if (
                    oneof_options.HasExtension(validate_pb2.oneof)
                    and oneof_options.Extensions[validate_pb2.oneof].required
                ):
                    fields = " \\| ".join(f.name for f in oneof.fields)
                    out.append((message.name, oneof.name, f"exactly one of {fields}"))
            for field in message.fields:
                options = field.GetOptions()
                phrases = []
                if options.HasExtension(validate_pb2.field):
                    phrases = describe(options.Extensions[validate_pb2.field])
                kind = field.message_type
                if (
                    kind is not None
                    and message.full_name in inputs
                    and not kind.GetOptions().map_entry
                    and _has_rules(kind)
                ):
                    phrases.append(f"the rules of `{kind.name}`")
                if phrases:
                    out.append((message.name, field.name, "; ".join(phrases)))
    return out


def table() -> str:
    """The markdown table, markers included."""
    from llmesh.v1 import common_pb2, gateway_pb2, inference_pb2, memory_pb2, registry_pb2

    files = [m.DESCRIPTOR for m in (gateway_pb2, common_pb2, memory_pb2, registry_pb2)]
    files.append(inference_pb2.DESCRIPTOR)
    lines = [BEGIN, "| message | field | limits |", "|---|---|---|"]
    lines += [f"| `{m}` | `{f}` | {r} |" for m, f, r in rows(files)]
    return "\n".join([*lines, END])


def render(doc_text: str) -> str:
    """``doc_text`` with its limits table replaced by the current one."""
    head, rest = doc_text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    return head + table() + tail


def main() -> None:
    DOC.write_text(render(DOC.read_text()))
    print(f"wrote the limits table of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
