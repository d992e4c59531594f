"""The ``ErrorInfo`` reasons: one list in the contract, the same list in the kernel,
and every reason the code base raises is on it."""

from __future__ import annotations

import ast
from pathlib import Path

from llmesh.kernel import errors
from llmesh.kernel.reasons import ErrorReason
from llmesh.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "ERROR_REASON_"


def _sources() -> list[Path]:
    roots = [ROOT / "libs" / "llmesh", *sorted((ROOT / "services").glob("*/llmesh_*"))]
    return [
        path
        for root in roots
        for path in sorted(root.rglob("*.py"))
        # Generated stubs, tests and build tools (llmesh.tools) raise no RPC errors.
        if not any(part in path.as_posix() for part in ("/v1/", "/tests/", "/llmesh/tools/"))
    ]


def _reasons_in(path: Path) -> list[tuple[int, str]]:
    """``reason="X"`` keyword arguments and ``default_reason = "X"`` assignments."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if (
                    kw.arg == "reason"
                    and isinstance(kw.value, ast.Constant)
                    and isinstance(kw.value.value, str)
                ):
                    found.append((kw.value.lineno, kw.value.value))
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            named = any(isinstance(t, ast.Name) and t.id == "default_reason" for t in targets)
            value = node.value
            if named and isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append((value.lineno, value.value))
    return found


def test_kernel_list_is_the_contract_list_in_the_same_order() -> None:
    contract = [
        name.removeprefix(PREFIX)
        for name in common_pb2.ErrorReason.keys()  # noqa: SIM118 (an enum wrapper)
        if name != f"{PREFIX}UNSPECIFIED"
    ]
    assert [r.value for r in ErrorReason] == contract
    assert all(r.name == r.value for r in ErrorReason)


def test_every_error_class_defaults_to_a_listed_reason() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.LlmeshError)
    ]
    assert len(classes) >= 12
    for cls in classes:
        assert cls.default_reason in ErrorReason.__members__, cls.__name__
        # The generic reason of a status code is the code's own name.
        assert cls.default_reason == cls.code.name, cls.__name__


def test_every_reason_raised_in_the_code_base_is_listed() -> None:
    sources = _sources()
    assert len(sources) > 50
    unlisted = [
        f"{path.relative_to(ROOT)}:{line}: {value}"
        for path in sources
        for line, value in _reasons_in(path)
        if value not in ErrorReason.__members__
    ]
    assert unlisted == [], "add these to ErrorReason in common.proto and kernel/reasons.py"


def test_the_wire_carries_the_name_without_prefix() -> None:
    status = errors.NotFound("no such model", reason=ErrorReason.MODEL_NOT_FOUND).to_status()
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "MODEL_NOT_FOUND" and info.domain == "llmesh.dev"


def test_api_doc_lists_the_contract_reasons() -> None:
    from llmesh.tools.reasons_doc import DOC, PROTO, reasons, render

    doc = DOC.read_text()
    assert render(doc, PROTO.read_text()) == doc, "run python -m llmesh.tools.reasons_doc"
    rows = reasons(PROTO.read_text())
    assert [r for r, _, _ in rows] == [r.value for r in ErrorReason]
    assert all(code and meaning for _, code, meaning in rows)
