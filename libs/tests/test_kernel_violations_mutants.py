"""Field paths and check composition of ``kernel.violations`` (kills its mutants:
docs/quality.md). Paths are what a client reads in ``BadRequest.field``."""

from __future__ import annotations

from typing import Any

import pytest

from llmesh.kernel.violations import (
    MAX_VIOLATIONS,
    Out,
    Violation,
    chain,
    join_path,
    report_required,
    run_rules,
    sized,
    subscript,
)


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("k", '["k"]'),
        ("", '[""]'),
        ('a"b', '["a\\"b"]'),
        ("a\\b", '["a\\\\b"]'),
        ("a\nb", '["a\\nb"]'),
        ("a\rb", '["a\\rb"]'),
        ('\\"', '["\\\\\\""]'),
        ("\t", '["\t"]'),
        (True, "[true]"),
        (False, "[false]"),
        (3, "[3]"),
        (0, "[0]"),
        (-7, "[-7]"),
    ],
)
def test_subscript(key: object, path: str) -> None:
    assert subscript(key) == path


def test_join_path() -> None:
    assert join_path("", "name") == "name"
    assert join_path("a.b", "c") == "a.b.c"
    assert join_path('m["k"]', "v") == 'm["k"].v'


def test_report_required() -> None:
    out: Out = [Violation("x", "y", "z")]
    report_required("a.b", out)
    assert out == [Violation("x", "y", "z"), Violation("a.b", "required", "value is required")]


def _rule(limit: int, rule_id: str) -> Any:
    return (lambda value: len(value) > limit, rule_id, f"at most {limit}")


def test_run_rules_reports_every_broken_rule_in_order() -> None:
    check = run_rules([_rule(1, "r1"), _rule(5, "r5"), _rule(2, "r2")])
    out: Out = []
    check("abcd", "p", out)
    assert out == [Violation("p", "r1", "at most 1"), Violation("p", "r2", "at most 2")]
    out = []
    check("a", "p", out)
    assert out == []


def _items(value: Any, path: str, out: Out) -> None:
    for i, item in enumerate(value):
        if item < 0:
            out.append(Violation(f"{path}[{i}]", "neg", "negative"))


def test_sized_checks_items_only_when_the_size_is_right() -> None:
    check = sized([_rule(3, "max_items"), _rule(4, "max_items_4")], _items)
    out: Out = []
    check([-1, -2, -3, -4, -5], "xs", out)
    assert out == [
        Violation("xs", "max_items", "at most 3"),
        Violation("xs", "max_items_4", "at most 4"),
    ]
    out = []
    check([1, -2], "xs", out)
    assert out == [Violation("xs[1]", "neg", "negative")]
    # Violations reported earlier (another field) do not stop the items being checked.
    out = [Violation("other", "r", "m")]
    check([-1], "xs", out)
    assert out == [Violation("other", "r", "m"), Violation("xs[0]", "neg", "negative")]


def test_sized_without_an_item_check() -> None:
    check = sized([_rule(1, "max_items")], None)
    out: Out = []
    check([1, 2], "xs", out)
    assert out == [Violation("xs", "max_items", "at most 1")]
    out = []
    check([1], "xs", out)
    assert out == []


def test_chain() -> None:
    assert chain([]) is None
    assert chain([_items]) is _items
    calls: list[str] = []

    def first(value: Any, path: str, out: Out) -> None:
        calls.append(f"first {value} {path}")

    def second(value: Any, path: str, out: Out) -> None:
        calls.append(f"second {value} {path}")
        out.append(Violation(path, "s", "m"))

    both = chain([first, second])
    assert both is not None
    out: Out = []
    both(5, "p", out)
    assert calls == ["first 5 p", "second 5 p"]
    assert out == [Violation("p", "s", "m")]


def test_violation_limit() -> None:
    assert MAX_VIOLATIONS == 100
