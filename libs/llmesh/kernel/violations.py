"""What a rule check reports, and how compiled checks are composed.

A message type compiles (``kernel.rulecheck``) to one ``Check``: a function that appends
the ``Violation`` s of a value at a field path. Scalar rules (``kernel.scalar_rules``)
are ``Rule`` triples; the helpers here run them and chain checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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


def join_path(path: str, name: str) -> str:
    """``path.name``, or ``name`` at the top level."""
    return f"{path}.{name}" if path else name


def run_rules(rules: list[Rule]) -> Check:
    """A check that reports every scalar rule the value breaks."""

    def check(value: Any, path: str, out: Out) -> None:
        for fails, rule_id, message in rules:
            if fails(value):
                out.append(Violation(path, rule_id, message))

    return check


def sized(size: list[Rule], items: Check | None) -> Check:
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


def chain(checks: list[Check]) -> Check | None:
    """One check running ``checks`` in order (``None`` when there is nothing to check)."""
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]

    def check(value: Any, path: str, out: Out) -> None:
        for one in checks:
            one(value, path, out)

    return check


def report_required(path: str, out: Out) -> None:
    """A required field that is unset."""
    out.append(Violation(path, "required", "value is required"))
