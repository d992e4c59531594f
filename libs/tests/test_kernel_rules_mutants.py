"""The native rule checker (``kernel.rulecheck`` + ``kernel.scalar_rules``) against
protovalidate, rule by rule at each bound (kills their mutants: docs/quality.md).

A message type built here carries one field per supported rule kind; each case sets
values on and around the rule's bounds, and the checker must report exactly what
protovalidate reports: field path, rule id and message, in order.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from buf.validate import validate_pb2
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    message_factory,
    timestamp_pb2,
)

from llmesh.kernel import scalar_rules as scalar_rules_module
from llmesh.kernel.rulecheck import RuleChecker
from llmesh.kernel.scalar_rules import format_value, scalar_rules
from llmesh.kernel.validation import RequestValidator
from llmesh.kernel.violations import Unsupported, Violation

FDP = descriptor_pb2.FieldDescriptorProto
PKG = "llmesh.rulestest"
FILE = "llmesh/rulestest/rules_mutants.proto"


def _rules(**kwargs: Any) -> validate_pb2.FieldRules:
    return validate_pb2.FieldRules(**kwargs)


def _add(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    kind: int,
    rules: validate_pb2.FieldRules | None = None,
    *,
    repeated: bool = False,
    type_name: str = "",
    oneof: int | None = None,
    optional: bool = False,
) -> None:
    field = message.field.add(
        name=name,
        number=len(message.field) + 1,
        type=kind,
        label=FDP.LABEL_REPEATED if repeated else FDP.LABEL_OPTIONAL,
    )
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof
    if optional:
        field.proto3_optional = True
        field.oneof_index = len(message.oneof_decl)
        message.oneof_decl.add(name=f"_{name}")
    if rules is not None:
        field.options.Extensions[validate_pb2.field].CopyFrom(rules)


def _map_entry(message: descriptor_pb2.DescriptorProto, name: str, key: int, value: int) -> str:
    entry = message.nested_type.add(name=name)
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=key, label=FDP.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=value, label=FDP.LABEL_OPTIONAL)
    return f".{PKG}.{message.name}.{name}"


def _build() -> dict[str, Any]:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(FILE)
    except KeyError:
        pool.Add(_file())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PKG}.{name}"))
        for name in (
            *("Scalars", "Numbers", "Lists", "Inner", "Choice", "Custom", "Times"),
            *("MsgCel", "MsgOneof", "MsgEmpty", "ItemCel", "ListUnique"),
        )
    }


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name=FILE,
        package=PKG,
        syntax="proto3",
        dependency=[
            "buf/validate/validate.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/timestamp.proto",
        ],
    )
    color = f.enum_type.add(name="Color")
    for i, name in enumerate(["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE"]):
        color.value.add(name=name, number=i)

    s = f.message_type.add(name="Scalars")
    S = validate_pb2.StringRules
    _add(s, "len", FDP.TYPE_STRING, _rules(string=S(min_len=2, max_len=4)))
    _add(s, "bytes", FDP.TYPE_STRING, _rules(string=S(min_bytes=2, max_bytes=8)))
    _add(
        s,
        "pattern",
        FDP.TYPE_STRING,
        _rules(string=S(pattern="^[a-z]+$"), ignore=validate_pb2.IGNORE_IF_ZERO_VALUE),
    )
    _add(s, "not_contains", FDP.TYPE_STRING, _rules(string=S(not_contains="x")))
    _add(s, "choices", FDP.TYPE_STRING, _rules(string=S(**{"in": ["a", "b"]})))
    _add(s, "banned", FDP.TYPE_STRING, _rules(string=S(not_in=["c", "d"])))
    _add(
        s,
        "color",
        FDP.TYPE_ENUM,
        _rules(enum=validate_pb2.EnumRules(defined_only=True, not_in=[0])),
        type_name=f".{PKG}.Color",
    )
    _add(
        s,
        "color_in",
        FDP.TYPE_ENUM,
        _rules(enum=validate_pb2.EnumRules(**{"in": [1]})),
        type_name=f".{PKG}.Color",
    )
    _add(
        s,
        "ignored",
        FDP.TYPE_STRING,
        _rules(string=S(min_len=5), ignore=validate_pb2.IGNORE_ALWAYS),
    )
    _add(s, "plain", FDP.TYPE_STRING)
    _add(s, "maybe", FDP.TYPE_INT32, _rules(int32=validate_pb2.Int32Rules(gt=5)), optional=True)

    n = f.message_type.add(name="Numbers")
    _add(n, "i32", FDP.TYPE_INT32, _rules(int32=validate_pb2.Int32Rules(gt=0, lt=10)))
    _add(n, "i64", FDP.TYPE_INT64, _rules(int64=validate_pb2.Int64Rules(gte=1, lte=5)))
    _add(n, "u32", FDP.TYPE_UINT32, _rules(uint32=validate_pb2.UInt32Rules(gt=3)))
    _add(n, "u64", FDP.TYPE_UINT64, _rules(uint64=validate_pb2.UInt64Rules(lte=7)))
    _add(n, "s32", FDP.TYPE_SINT32, _rules(sint32=validate_pb2.SInt32Rules(gte=-2)))
    _add(n, "s64", FDP.TYPE_SINT64, _rules(sint64=validate_pb2.SInt64Rules(lt=-1)))
    _add(
        n,
        "dbl",
        FDP.TYPE_DOUBLE,
        _rules(double=validate_pb2.DoubleRules(gt=0.5, lte=2.5, finite=True)),
    )
    _add(n, "flt", FDP.TYPE_FLOAT, _rules(float=validate_pb2.FloatRules(gte=0, lt=1.5)))
    _add(n, "fin", FDP.TYPE_DOUBLE, _rules(double=validate_pb2.DoubleRules(finite=True)))
    _add(n, "konst", FDP.TYPE_INT32, _rules(int32=validate_pb2.Int32Rules(const=3)))
    _add(n, "listed", FDP.TYPE_INT32, _rules(int32=validate_pb2.Int32Rules(**{"in": [1, 2]})))
    _add(n, "unlisted", FDP.TYPE_INT32, _rules(int32=validate_pb2.Int32Rules(not_in=[0, 9])))
    _add(n, "flag", FDP.TYPE_BOOL)

    t = f.message_type.add(name="Times")
    D = duration_pb2.Duration
    _add(
        t,
        "ttl",
        FDP.TYPE_MESSAGE,
        _rules(duration=validate_pb2.DurationRules(gt=D(seconds=0), lte=D(seconds=60))),
        type_name=".google.protobuf.Duration",
    )
    _add(
        t,
        "short",
        FDP.TYPE_MESSAGE,
        _rules(duration=validate_pb2.DurationRules(lt=D(seconds=1, nanos=500_000_000))),
        type_name=".google.protobuf.Duration",
    )
    _add(
        t,
        "after_ms",
        FDP.TYPE_MESSAGE,
        _rules(
            timestamp=validate_pb2.TimestampRules(
                lt=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=2_000_000)
            )
        ),
        type_name=".google.protobuf.Timestamp",
    )
    _add(
        t,
        "after",
        FDP.TYPE_MESSAGE,
        _rules(
            timestamp=validate_pb2.TimestampRules(
                gte=timestamp_pb2.Timestamp(seconds=1_700_000_000)
            )
        ),
        type_name=".google.protobuf.Timestamp",
    )

    inner = f.message_type.add(name="Inner")
    _add(inner, "name", FDP.TYPE_STRING, _rules(string=S(min_len=1)))
    _add(inner, "child", FDP.TYPE_MESSAGE, type_name=f".{PKG}.Inner")

    lists = f.message_type.add(name="Lists")
    R = validate_pb2.RepeatedRules
    _add(
        lists,
        "tags",
        FDP.TYPE_STRING,
        _rules(repeated=R(min_items=1, max_items=3, items=_rules(string=S(max_len=3)))),
        repeated=True,
    )
    _add(lists, "bare", FDP.TYPE_INT32, _rules(repeated=R(max_items=2)), repeated=True)
    _add(
        lists,
        "skip_zero",
        FDP.TYPE_INT32,
        _rules(
            repeated=R(
                items=_rules(
                    int32=validate_pb2.Int32Rules(gt=2), ignore=validate_pb2.IGNORE_IF_ZERO_VALUE
                )
            )
        ),
        repeated=True,
    )
    _add(
        lists,
        "skip_zero_s",
        FDP.TYPE_STRING,
        _rules(
            repeated=R(items=_rules(string=S(min_len=2), ignore=validate_pb2.IGNORE_IF_ZERO_VALUE))
        ),
        repeated=True,
    )
    _add(lists, "inners", FDP.TYPE_MESSAGE, repeated=True, type_name=f".{PKG}.Inner")
    _add(
        lists,
        "required_inner",
        FDP.TYPE_MESSAGE,
        _rules(required=True),
        type_name=f".{PKG}.Inner",
    )
    _add(lists, "opt_inner", FDP.TYPE_MESSAGE, type_name=f".{PKG}.Inner")
    labels = _map_entry(lists, "LabelsEntry", FDP.TYPE_STRING, FDP.TYPE_INT32)
    M = validate_pb2.MapRules
    _add(
        lists,
        "labels",
        FDP.TYPE_MESSAGE,
        _rules(
            map=M(
                min_pairs=1,
                max_pairs=2,
                keys=_rules(string=S(min_len=2)),
                values=_rules(int32=validate_pb2.Int32Rules(gt=0)),
            )
        ),
        repeated=True,
        type_name=labels,
    )
    sized = _map_entry(lists, "SizedEntry", FDP.TYPE_INT32, FDP.TYPE_STRING)
    _add(
        lists, "sized", FDP.TYPE_MESSAGE, _rules(map=M(max_pairs=1)), repeated=True, type_name=sized
    )
    by_key = _map_entry(lists, "ByKeyEntry", FDP.TYPE_BOOL, FDP.TYPE_MESSAGE)
    lists.nested_type[-1].field[1].type_name = f".{PKG}.Inner"
    _add(lists, "by_key", FDP.TYPE_MESSAGE, repeated=True, type_name=by_key)
    _add(lists, "required_tags", FDP.TYPE_STRING, _rules(required=True), repeated=True)
    keyed = _map_entry(lists, "KeyedEntry", FDP.TYPE_STRING, FDP.TYPE_INT32)
    _add(
        lists,
        "keyed",
        FDP.TYPE_MESSAGE,
        _rules(map=M(keys=_rules(string=S(min_len=2)))),
        repeated=True,
        type_name=keyed,
    )
    _add(lists, "choice", FDP.TYPE_MESSAGE, type_name=f".{PKG}.Choice")
    zmap = _map_entry(lists, "ZmapEntry", FDP.TYPE_STRING, FDP.TYPE_INT32)
    _add(
        lists,
        "zmap",
        FDP.TYPE_MESSAGE,
        _rules(
            map=M(
                values=_rules(
                    int32=validate_pb2.Int32Rules(gt=5), ignore=validate_pb2.IGNORE_IF_ZERO_VALUE
                )
            )
        ),
        repeated=True,
        type_name=zmap,
    )
    _add(
        lists,
        "zinners",
        FDP.TYPE_MESSAGE,
        _rules(repeated=R(items=_rules(ignore=validate_pb2.IGNORE_IF_ZERO_VALUE))),
        repeated=True,
        type_name=f".{PKG}.Inner",
    )
    _add(
        lists,
        "ignored_items",
        FDP.TYPE_STRING,
        _rules(repeated=R(items=_rules(string=S(min_len=3), ignore=validate_pb2.IGNORE_ALWAYS))),
        repeated=True,
    )
    unique = f.message_type.add(name="ListUnique")
    _add(unique, "ids", FDP.TYPE_STRING, _rules(repeated=R(unique=True)), repeated=True)

    choice = f.message_type.add(name="Choice")
    choice.oneof_decl.add(name="pick")
    choice.oneof_decl[0].options.Extensions[validate_pb2.oneof].required = True
    choice.oneof_decl.add(name="free")
    # The oneof rule is present but not required: no violation when nothing is set.
    choice.oneof_decl[1].options.Extensions[validate_pb2.oneof].SetInParent()
    _add(choice, "a", FDP.TYPE_STRING, _rules(string=S(min_len=2)), oneof=0)
    _add(choice, "b", FDP.TYPE_INT32, oneof=0)
    _add(choice, "c", FDP.TYPE_STRING, oneof=1)
    _add(choice, "must", FDP.TYPE_MESSAGE, _rules(required=True), type_name=f".{PKG}.Inner")

    # Message-level rules: CEL or a message oneof rule go to protovalidate; an empty
    # message rule does not stop the native checks.
    msg_cel = f.message_type.add(name="MsgCel")
    msg_cel.options.Extensions[validate_pb2.message].cel.add(
        id="msg.short", message="a too long", expression="this.a.size() < 3"
    )
    _add(msg_cel, "a", FDP.TYPE_STRING)
    msg_oneof = f.message_type.add(name="MsgOneof")
    msg_oneof.options.Extensions[validate_pb2.message].oneof.add(fields=["a", "b"], required=True)
    _add(msg_oneof, "a", FDP.TYPE_STRING)
    _add(msg_oneof, "b", FDP.TYPE_STRING)
    msg_empty = f.message_type.add(name="MsgEmpty")
    msg_empty.options.Extensions[validate_pb2.message].SetInParent()
    _add(msg_empty, "a", FDP.TYPE_STRING, _rules(string=S(min_len=2)))
    item_cel = f.message_type.add(name="ItemCel")
    _add(
        item_cel,
        "words",
        FDP.TYPE_STRING,
        _rules(
            repeated=R(
                items=_rules(
                    cel=[
                        validate_pb2.Rule(
                            id="word.short", message="short", expression="this.size() < 3"
                        )
                    ]
                )
            )
        ),
        repeated=True,
    )

    custom = f.message_type.add(name="Custom")
    _add(
        custom,
        "word",
        FDP.TYPE_STRING,
        _rules(
            cel=[validate_pb2.Rule(id="word.short", message="short", expression="this.size() < 3")]
        ),
    )
    return f


TYPES = _build()
VALIDATOR = RequestValidator()


_ANSWERS: dict[bytes, list[Violation]] = {}


def _oracle(message: Any) -> list[Violation]:
    """protovalidate's answer, remembered per message (a mutation run forks every test
    process from one that imported this module: the slow CEL runs once, not per mutant)."""
    key = (
        message.DESCRIPTOR.full_name.encode()
        + b"\0"
        + message.SerializeToString(deterministic=True)
    )
    if key not in _ANSWERS:
        _ANSWERS[key] = VALIDATOR._protovalidate(message)
    return list(_ANSWERS[key])


def _native(message: Any) -> list[Violation]:
    fallback_calls: list[Any] = []

    def fallback(m: Any) -> list[Violation]:
        fallback_calls.append(m)
        return _oracle(m)

    return RuleChecker(fallback).violations(message)


D = duration_pb2.Duration
T = timestamp_pb2.Timestamp
CASES: list[tuple[str, dict[str, Any]]] = [
    ("Scalars", {}),
    ("Scalars", {"len": "ab", "bytes": "ab", "color": 1, "color_in": 1}),
    ("Scalars", {"len": "a", "bytes": "é", "pattern": "A", "not_contains": "axb"}),
    ("Scalars", {"len": "abcd", "bytes": "éééé", "pattern": "ab", "choices": "a"}),
    ("Scalars", {"len": "abcde", "bytes": "éééééé", "choices": "z", "banned": "c", "color": 7}),
    ("Scalars", {"len": "ééé", "bytes": "abcdefghi", "banned": "d", "color": 2, "color_in": 2}),
    ("Scalars", {"bytes": "ab\u00e9\u00e9\u00e9", "ignored": "x", "plain": "q", "maybe": 5}),
    ("Scalars", {"maybe": 6, "color": 0}),
    ("Scalars", {"maybe": 0}),
    ("Scalars", {"color_in": 7, "color": 1}),
    ("Numbers", {}),
    ("Numbers", {"i32": 1, "i64": 1, "u32": 4, "s32": -2, "s64": -2, "dbl": 2.5, "flt": 0.0}),
    ("Numbers", {"i32": 9, "i64": 5, "u32": 3, "u64": 7, "s32": -3, "s64": -1, "dbl": 0.5}),
    ("Numbers", {"i32": 10, "i64": 6, "u64": 8, "dbl": 2.6, "flt": 1.5, "konst": 3}),
    ("Numbers", {"i32": -1, "i64": 0, "dbl": math.inf, "flt": -0.5, "konst": 4, "listed": 2}),
    ("Numbers", {"dbl": math.nan, "fin": math.inf, "listed": 3, "unlisted": 9}),
    ("Numbers", {"fin": -math.inf, "unlisted": 1, "flag": True}),
    ("Numbers", {"fin": 1.0, "dbl": 1.0, "flt": 1.4}),
    ("Times", {}),
    ("Times", {"after_ms": T(seconds=1_800_000_000)}),
    ("Times", {"after_ms": T(seconds=1_700_000_000, nanos=1_999_000)}),
    ("Times", {"after_ms": T(seconds=1_700_000_000, nanos=2_000_000)}),
    ("Times", {"ttl": D(seconds=60), "short": D(seconds=1, nanos=499_999_999)}),
    ("Times", {"ttl": D(nanos=1000), "short": D(seconds=1, nanos=500_000_000)}),
    ("Times", {"ttl": D(seconds=0), "after": T(seconds=1_700_000_000)}),
    ("Times", {"ttl": D(seconds=60, nanos=1000), "short": D(seconds=2), "after": T(seconds=1)}),
    ("Times", {"ttl": D(seconds=-1), "after": T(seconds=1_699_999_999, nanos=999_000_000)}),
    ("Lists", {}),
    (
        "Lists",
        {
            "tags": ["a"],
            "required_inner": {"name": "n"},
            "labels": {"ab": 1},
            "required_tags": ["x"],
        },
    ),
    ("Lists", {"tags": ["abcd", "ab", "abcde"], "required_inner": {"name": "n"}}),
    (
        "Lists",
        {"tags": ["a", "b", "c", "d"], "bare": [1, 2, 3], "labels": {"ab": 1, "bc": 2, "de": 3}},
    ),
    ("Lists", {"tags": ["abcd"], "bare": [1, 2], "labels": {"a": 1}, "sized": {1: "x", 2: "y"}}),
    ("Lists", {"labels": {"ab": 0, "c": 1}, "sized": {1: ""}, "required_tags": ["x"]}),
    ("Lists", {"skip_zero_s": ["", "a", "ab", ""], "labels": {"ab": 1}, "tags": ["a"]}),
    ("Lists", {"skip_zero": [0, 1, 3, 0, 2], "inners": [{"name": "a"}, {}, {"child": {}}]}),
    (
        "Lists",
        {
            "opt_inner": {"child": {"child": {"name": ""}}},
            "by_key": {True: {}, False: {"name": "x"}},
        },
    ),
    ("Choice", {}),
    ("Choice", {"a": "x"}),
    ("Choice", {"a": "xy"}),
    ("Choice", {"b": 0}),
    ("Choice", {"c": "only the free oneof"}),
    ("Choice", {"b": 3, "must": {"name": "x"}}),
    ("Lists", {"keyed": {"a": 1, "bb": 2}, "tags": ["a"], "choice": TYPES["Choice"]()}),
    ("Lists", {"choice": TYPES["Choice"](a="x"), "tags": ["a"]}),
    ("Lists", {"tags": ["a"], "zmap": {"a": 0, "b": 3, "c": 6}, "ignored_items": ["x"]}),
    ("Lists", {"tags": ["a"], "zinners": [{"name": "ok"}, {}]}),
    ("ListUnique", {"ids": ["a", "b", "a"]}),
    ("ListUnique", {"ids": ["a", "b"]}),
    ("MsgCel", {"a": "abcd"}),
    ("MsgCel", {"a": "ab"}),
    ("MsgOneof", {}),
    ("MsgOneof", {"a": "x"}),
    ("MsgEmpty", {"a": "x"}),
    ("ItemCel", {"words": ["ab", "abcd"]}),
    ("Custom", {"word": "ab"}),
    ("Custom", {"word": "abcd"}),
]


def _message(type_name: str, values: dict[str, Any]) -> Any:
    message = TYPES[type_name]()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if (
            isinstance(value, dict)
            and field.message_type is not None
            and not (field.message_type.GetOptions().map_entry)
        ):
            getattr(message, name).CopyFrom(
                _inner(value) if field.message_type.name == "Inner" else value
            )
        elif isinstance(value, dict):
            target = getattr(message, name)
            for k, v in value.items():
                if isinstance(v, dict):
                    target[k].CopyFrom(_inner(v))
                else:
                    target[k] = v
        elif isinstance(value, list):
            if value and isinstance(value[0], dict):
                getattr(message, name).extend(_inner(v) for v in value)
            else:
                getattr(message, name).extend(value)
        elif isinstance(value, (D, T)) or hasattr(value, "DESCRIPTOR"):
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _inner(values: dict[str, Any]) -> Any:
    inner = TYPES["Inner"]()
    if "name" in values:
        inner.name = values["name"]
    if "child" in values:
        inner.child.CopyFrom(_inner(values["child"]))
    return inner


for _type_name, _values in CASES:
    _oracle(_message(_type_name, _values))


@pytest.mark.parametrize(
    ("type_name", "values"), CASES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(CASES)]
)
def test_native_rules_report_what_protovalidate_reports(
    type_name: str, values: dict[str, Any]
) -> None:
    message = _message(type_name, values)
    assert _native(message) == _oracle(message)


def test_items_of_a_list_that_ignores_zero_values() -> None:
    """A list's items with ``ignore: IGNORE_IF_ZERO_VALUE`` skip the items' zero (0, ""),
    as protovalidate does (the checker compared them with the list's default, ``[]``)."""
    message = _message(
        "Lists",
        {
            "tags": ["a"],
            "required_inner": {"name": "n"},
            "labels": {"ab": 1},
            "required_tags": ["x"],
        },
    )
    message.skip_zero.extend([0, 1, 0])
    message.skip_zero_s.extend(["", "a"])
    assert _native(message) == [
        Violation("skip_zero[1]", "int32.gt", "must be greater than 2"),
        Violation("skip_zero_s[1]", "string.min_len", "must be at least 2 characters"),
    ]
    assert _native(message) == _oracle(message)


def test_deliberate_differences_from_protovalidate() -> None:
    """Where the native checker differs on purpose: a list or map of the wrong size is
    not walked (one comparison, not a pass over 100,000 items), and a map entry's key is
    reported before its value (protovalidate: value first)."""
    oversized = _message(
        "Lists",
        {
            "tags": ["abcd"] * 4,
            "required_inner": {"name": "n"},
            "labels": {"ab": 1},
            "required_tags": ["x"],
        },
    )
    native, oracle = _native(oversized), _oracle(oversized)
    assert native == [
        Violation("tags", "repeated.max_items", "must contain no more than 3 item(s)")
    ]
    assert set(native) < set(oracle)
    both = _message(
        "Lists",
        {
            "tags": ["a"],
            "required_inner": {"name": "n"},
            "labels": {"c": -1},
            "required_tags": ["x"],
        },
    )
    native, oracle = _native(both), _oracle(both)
    assert [v.rule_id for v in native] == ["string.min_len", "int32.gt"]
    assert native == [oracle[1], oracle[0]]


def test_cases_break_rules() -> None:
    broken = sum(1 for t, v in CASES if _oracle(_message(t, v)))
    assert broken >= 30  # most cases break something; a few are all valid


def test_a_custom_rule_goes_to_the_fallback_with_the_path_prefixed() -> None:
    seen: list[Any] = []

    def fallback(m: Any) -> list[Violation]:
        seen.append(m)
        return [Violation("word", "word.short", "short"), Violation("", "msg", "whole")]

    checker = RuleChecker(fallback)
    custom = _message("Custom", {"word": "abcd"})
    assert checker.violations(custom) == [
        Violation("word", "word.short", "short"),
        Violation("", "msg", "whole"),
    ]
    assert seen == [custom]
    checker._delegate(custom, "outer", out := [])
    assert out == [
        Violation("outer.word", "word.short", "short"),
        Violation("outer", "msg", "whole"),
    ]


def test_plans_are_compiled_once_per_type() -> None:
    checker = RuleChecker(lambda m: [])
    message = _message("Lists", {"tags": ["a"]})
    checker.violations(message)
    plans = dict(checker._plans)
    assert f"{PKG}.Lists" in plans and f"{PKG}.Inner" in plans
    checker.violations(message)
    assert checker._plans == plans
    empty = TYPES["Numbers"].DESCRIPTOR.fields_by_name["flag"]
    assert checker._field(empty) is None


def test_the_violation_count_is_bounded() -> None:
    message = _message(
        "Lists",
        {
            "tags": ["a"],
            "required_inner": {"name": "n"},
            "labels": {"ab": 1},
            "required_tags": ["x"],
        },
    )
    message.skip_zero.extend([1] * 150)
    found = _native(message)
    assert len(found) == 100
    assert found[0] == Violation("skip_zero[0]", "int32.gt", "must be greater than 2")
    assert found[-1].field == "skip_zero[99]"
    many = _message(
        "Lists", {"tags": ["a"], "required_inner": {"name": "n"}, "required_tags": ["x"]}
    )
    for i in range(150):
        many.labels[f"k{i:03d}"] = 0
    many_found = _native(many)
    assert Violation("labels", "map.max_pairs", "map must be at most 2 entries") in many_found
    many.labels.clear()
    many.labels["ab"] = 1
    many.skip_zero.extend([1] * 150)
    assert len(_native(many)) == 100
    keyed = _message(
        "Lists",
        {
            "tags": ["a"],
            "required_inner": {"name": "n"},
            "required_tags": ["x"],
            "labels": {"ab": 1},
        },
    )
    for i in range(150):  # one-character keys: each breaks keys.min_len
        keyed.keyed[chr(0x4E00 + i)] = i
    found_keys = _native(keyed)
    assert len(found_keys) == 100
    assert {v.rule_id for v in found_keys} == {"string.min_len"}


def test_unsupported_rules() -> None:
    field = TYPES["Scalars"].DESCRIPTOR.fields_by_name["len"]
    with pytest.raises(Unsupported):
        scalar_rules("string", validate_pb2.StringRules(email=True), field)
    with pytest.raises(Unsupported):
        scalar_rules("bytes", validate_pb2.BytesRules(min_len=1), field)
    with pytest.raises(Unsupported, match="exclusive range"):
        scalar_rules("int32", validate_pb2.Int32Rules(gt=10, lt=5), field)
    assert scalar_rules("int32", validate_pb2.Int32Rules(), field) == []
    assert scalar_rules("uint32", validate_pb2.UInt32Rules(example=[3]), field) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (1.5, "1.5"),
        (2.0, "2"),
        (7, "7"),
        ("s", "s"),
        ([1, "a", True], "[1, a, true]"),
        ((2.5,), "[2.5]"),
        (D(seconds=3), "3s"),
        (D(seconds=1, nanos=500_000_000), "1.5s"),
        (D(seconds=0, nanos=1_000), "0.000001s"),
        (T(seconds=0), "1970-01-01T00:00:00Z"),
        (T(seconds=1, nanos=2_000_000), "1970-01-01T00:00:01.002Z"),
        (T(seconds=1, nanos=1_999_999), "1970-01-01T00:00:01.001Z"),
        (T(seconds=1, nanos=999_999), "1970-01-01T00:00:01Z"),
    ],
)
def test_format_value(value: Any, text: str) -> None:
    assert format_value(value) == text


def test_max_bytes_counts_bytes_not_characters() -> None:
    field = TYPES["Scalars"].DESCRIPTOR.fields_by_name["bytes"]
    ((fails, rule_id, message),) = scalar_rules(
        "string", validate_pb2.StringRules(max_bytes=4), field
    )
    assert (rule_id, message) == ("string.max_bytes", "must be at most 4 bytes")
    assert not fails("abcd")
    assert fails("abcde")
    assert fails("ééé")
    assert not fails("éé")
    assert not fails("a")


# --- time values, bounds, formats -------------------------------------------------------

_TS_LOW, _TS_HIGH = -62_135_596_800, 253_402_300_799
_DUR_MAX = 315_576_000_000


@pytest.mark.parametrize(
    ("seconds", "nanos", "malformed"),
    [
        (_TS_LOW, 0, False),
        (_TS_HIGH, 999_999_999, False),
        (_TS_LOW - 1, 0, True),
        (_TS_HIGH + 1, 0, True),
        (0, 1_000_000_000, True),
        (0, -1, True),
        (-1, 500, False),  # a timestamp before 1970 has positive nanos
    ],
)
def test_malformed_timestamps(seconds: int, nanos: int, malformed: bool) -> None:
    assert scalar_rules_module._malformed_time("timestamp", T(seconds=seconds, nanos=nanos)) is (
        malformed
    )


@pytest.mark.parametrize(
    ("seconds", "nanos", "malformed"),
    [
        (_DUR_MAX, 0, False),
        (-_DUR_MAX, 0, False),
        (_DUR_MAX + 1, 0, True),
        (-_DUR_MAX - 1, 0, True),
        (0, 999_999_999, False),
        (0, -999_999_999, False),
        (0, 1_000_000_000, True),
        (0, -1_000_000_000, True),
        (1, -1, True),
        (2, -1, True),
        (-1, 1, True),
        (-1, 2, True),
        (0, -5, False),
        (0, 5, False),
        (3, 5, False),
        (-3, -5, False),
    ],
)
def test_malformed_durations(seconds: int, nanos: int, malformed: bool) -> None:
    assert scalar_rules_module._malformed_time("duration", D(seconds=seconds, nanos=nanos)) is (
        malformed
    )


def _fails(rules: list[Any], value: Any) -> list[str]:
    return [rule_id for fails, rule_id, _ in rules if fails(value)]


def test_a_malformed_time_reports_the_bound_or_else_valid() -> None:
    field = TYPES["Times"].DESCRIPTOR.fields_by_name["ttl"]
    rules = scalar_rules("duration", validate_pb2.DurationRules(lte=D(seconds=1)), field)
    # Past the bound (by its nanos): the bound, as protovalidate reports it.
    assert _fails(rules, D(seconds=0, nanos=1_000_000_001)) == ["duration.lte"]
    # Within it: only "valid".
    assert _fails(rules, D(seconds=0, nanos=-1_000_000_000)) == ["duration.valid"]
    assert _fails(rules, D(seconds=1, nanos=-1)) == ["duration.valid"]
    assert _fails(rules, D(seconds=1)) == []
    ((_, _, valid_message), _) = rules
    assert valid_message == (
        "must be a valid duration (nanos -999999999..999999999 with the seconds' sign, at "
        "most 10000 years)"
    )
    stamp = TYPES["Times"].DESCRIPTOR.fields_by_name["after"]
    stamps = scalar_rules("timestamp", validate_pb2.TimestampRules(gte=T(seconds=0)), stamp)
    assert _fails(stamps, T(seconds=5, nanos=-1)) == ["timestamp.valid"]
    assert _fails(stamps, T(seconds=-5, nanos=-1)) == ["timestamp.gte"]
    # Timestamp limits, not a duration's: past year 9999 is malformed, a time before
    # 1970 with positive nanos is not.
    assert _fails(stamps, T(seconds=_TS_HIGH + 1)) == ["timestamp.valid"]
    before = scalar_rules("timestamp", validate_pb2.TimestampRules(lt=T(seconds=10)), stamp)
    assert _fails(before, T(seconds=-5, nanos=5)) == []
    assert stamps[0][2] == "must be a valid timestamp (nanos 0..999999999, years 1..9999)"


def test_ranges_are_run_natively_including_a_single_point() -> None:
    field = TYPES["Numbers"].DESCRIPTOR.fields_by_name["i32"]
    ((fails, rule_id, message),) = scalar_rules(
        "int32", validate_pb2.Int32Rules(gte=5, lte=5), field
    )
    assert (rule_id, message) == (
        "int32.gte_lte",
        "must be greater than or equal to 5 and less than or equal to 5",
    )
    assert not fails(5) and fails(4) and fails(6)
    ((_, rule_id, _),) = scalar_rules("int32", validate_pb2.Int32Rules(gt=0, lt=10), field)
    assert rule_id == "int32.gt_lt"


def test_enum_in_without_defined_only() -> None:
    field = TYPES["Scalars"].DESCRIPTOR.fields_by_name["color_in"]
    rules = scalar_rules("enum", validate_pb2.EnumRules(**{"in": [1]}), field)
    assert _fails(rules, 7) == ["enum.in"]


def test_format_value_of_other_iterables_and_time_edges() -> None:
    assert format_value(frozenset({"a"})) == "[a]"
    assert format_value(x for x in (1, True)) == "[1, true]"
    assert format_value(T(seconds=1, nanos=1_000_000)) == "1970-01-01T00:00:01.001Z"
    assert format_value(T(seconds=1, nanos=999_999)) == "1970-01-01T00:00:01Z"
    assert format_value(D(nanos=1_500)) == "0.000001s"


def test_format_value_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time as time_module

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time_module.tzset()
    try:
        assert format_value(T(seconds=0)) == "1970-01-01T00:00:00Z"
    finally:
        monkeypatch.undo()
        time_module.tzset()
