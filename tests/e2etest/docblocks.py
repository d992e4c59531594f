"""The code blocks of a Markdown page and what the page says to check about each, so a
test can run a doc's examples as written (docs and tests cannot drift).

An HTML comment on the line before a fence (blank lines between are allowed) says it:

- ``<!-- check: run -->`` — a shell block, run with ``bash``; the next block must be its
  output: ``<!-- check: output=text|json|json-shape [message=NAME] [exit=N] -->``
  of stdout + stderr (``text``: equal, trimmed; ``json``: every key and value shown is in
  its JSON; ``json-shape``: every key shown, with a value of the same JSON type;
  ``exit``: the exit status, default 0).
- ``<!-- check: message=NAME -->`` — a ``json`` block (one document, or one per line) or
  a ``textproto`` block that must parse as the protobuf message ``NAME``; output blocks
  with ``message=`` parse as that message too (unknown field names fail).
- ``<!-- not-run: reason -->`` — shown only; the reason is required.

``python`` and ``js`` blocks are run by their own tests; any other block without a
comment is an error (see :func:`unchecked`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory, text_format
from google.protobuf.message import Message

RUN_ELSEWHERE = frozenset({"python", "js"})
OUTPUT_KINDS = frozenset({"text", "json", "json-shape"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
_MARKER = re.compile(r"^[ \t]*<!--[ \t]*(?P<kind>check|not-run):(?P<body>.*?)-->[ \t]*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its text (indent removed), where it starts, and
    the marker comment before it (``kind`` ``check``/``not-run``/``""``)."""

    lang: str
    code: str
    line: int
    kind: str = ""
    options: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def where(self) -> str:
        return f"line {self.line} ({self.lang or 'no language'})"


@dataclass(frozen=True)
class Example:
    """A shell block to run and the output block it must print."""

    command: Block
    output: Block

    @property
    def exit_status(self) -> int:
        return int(self.output.options.get("exit", "0"))


def blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown``, in order, with its marker comment."""
    found: list[Block] = []
    lines = markdown.splitlines()
    marker: re.Match[str] | None = None
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            if lines[i].strip():
                marker = _MARKER.match(lines[i])
            i += 1
            continue
        indent, start = fence["indent"], i + 1
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        body = [line.removeprefix(indent) for line in lines[start:i]]
        found.append(_block(fence["lang"], "\n".join(body) + "\n", start, marker))
        marker = None
        i += 1
    return found


def _block(lang: str, code: str, line: int, marker: re.Match[str] | None) -> Block:
    if marker is None:
        return Block(lang, code, line)
    body = marker["body"].strip()
    if marker["kind"] == "not-run":
        return Block(lang, code, line, kind="not-run", reason=body)
    options = dict(part.partition("=")[::2] for part in body.split())
    return Block(lang, code, line, kind="check", options=options)


def unchecked(found: list[Block]) -> list[str]:
    """What is wrong with the markers: blocks nobody runs or checks, not-run without a
    reason, unknown options, a run block not followed by its output."""
    problems: list[str] = []
    for i, block in enumerate(found):
        after = found[i + 1] if i + 1 < len(found) else None
        if block.kind == "not-run" and not block.reason:
            problems.append(f"{block.where}: not-run needs a reason")
        elif block.kind == "" and block.lang not in RUN_ELSEWHERE:
            problems.append(f"{block.where}: neither checked nor marked not-run")
        elif block.kind == "check":
            problems.extend(_option_problems(block, after))
    return problems


def _option_problems(block: Block, after: Block | None) -> list[str]:
    options = block.options
    unknown = set(options) - {"run", "output", "message", "exit"}
    if unknown:
        return [f"{block.where}: unknown check options {sorted(unknown)}"]
    if "run" in options:
        if block.lang not in {"sh", "bash"}:
            return [f"{block.where}: only sh/bash blocks run"]
        if after is None or "output" not in after.options:
            return [f"{block.where}: a run block must be followed by its output block"]
    elif "output" in options and options["output"] not in OUTPUT_KINDS:
        return [f"{block.where}: output must be one of {sorted(OUTPUT_KINDS)}"]
    elif not options.keys() & {"output", "message"}:
        return [f"{block.where}: check says neither run, output nor message"]
    return []


def examples(found: list[Block]) -> list[Example]:
    """The run blocks, each with the output block after it."""
    return [
        Example(block, found[i + 1])
        for i, block in enumerate(found)
        if block.kind == "check" and "run" in block.options
    ]


def message_class(name: str) -> type[Message]:
    """The generated class of the message ``name`` (its module must be imported)."""
    descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    return message_factory.GetMessageClass(descriptor)


def parse_as_message(block: Block) -> list[Message]:
    """The block's text parsed as its ``message=`` (json: one document or one per line;
    textproto); raises on unknown fields or bad values."""
    cls = message_class(block.options["message"])
    if block.lang == "textproto":
        return [text_format.Parse(block.code, cls())]
    try:
        documents = [json.loads(block.code)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in block.code.splitlines() if line.strip()]
    return [json_format.ParseDict(document, cls()) for document in documents]


def json_mismatches(shown: Any, actual: Any, *, values: bool, path: str = "$") -> list[str]:
    """Where ``actual`` lacks what ``shown`` shows: every key (recursively), list items by
    position (``actual`` may be longer), and, with ``values``, equal scalars; without,
    scalars of the same JSON type."""
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems: list[str] = []
        for key, value in shown.items():
            if key not in actual:
                problems.append(f"{path}.{key}: missing")
            else:
                problems += json_mismatches(value, actual[key], values=values, path=f"{path}.{key}")
        return problems
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(actual) < len(shown):
            return [f"{path}: expected a list of at least {len(shown)} items, got {actual!r}"]
        return [
            problem
            for i, item in enumerate(shown)
            for problem in json_mismatches(item, actual[i], values=values, path=f"{path}[{i}]")
        ]
    if values:
        return [] if shown == actual else [f"{path}: expected {shown!r}, got {actual!r}"]
    return (
        []
        if _json_type(shown) == _json_type(actual)
        else [f"{path}: {actual!r} is not like {shown!r}"]
    )


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(type(value))
    return "number" if isinstance(value, int | float) else type(value).__name__


def output_mismatches(example: Example, status: int, stdout: str, stderr: str) -> list[str]:
    """How what the command printed differs from its output block."""
    problems = []
    if status != example.exit_status:
        problems.append(f"exit status {status}, the doc says {example.exit_status}")
    output, printed = example.output, stdout + stderr
    kind = output.options["output"]
    if kind == "text":
        if printed.strip() != output.code.strip():
            problems.append(f"printed:\n{printed}")
        return problems
    try:
        actual = json.loads(printed)
    except json.JSONDecodeError:
        return [*problems, f"printed no JSON:\n{printed}"]
    shown = json.loads(output.code)
    return problems + json_mismatches(shown, actual, values=kind == "json")
