"""Layers point down only, and no package has a module-level import cycle.

Read statically (``ast``), so nothing is imported:

- the kernel (everything under ``libs/``) imports no service and not the CLI;
- a service imports no other service and not the CLI: services share only the kernel
  and the generated stubs;
- within each package, imports form no cycle: neither at module level nor through an
  import deferred into a function (that one only moves the cycle to run time; the
  gateway's store factory and the inference servicer/worker had such cycles). Imports
  under ``TYPE_CHECKING`` do not count: they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "llmesh_gateway": ROOT / "services/gateway/llmesh_gateway",
    "llmesh_registry": ROOT / "services/registry/llmesh_registry",
    "llmesh_inference": ROOT / "services/inference/llmesh_inference",
    "llmesh_memory": ROOT / "services/memory/llmesh_memory",
}
CLI = {"llmesh_cli": ROOT / "apps/cli/llmesh_cli"}
KERNEL = {"llmesh": ROOT / "libs/llmesh"}
# Generated code: not ours to layer.
GENERATED = (ROOT / "libs/llmesh/v1", ROOT / "libs/buf")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module, or for ``from X import n`` the name ``X.n``
    line: int
    top_level: bool  # runs when the module is imported
    parent: str = ""  # for ``from X import n``: ``X``, the module when ``X.n`` is not one

    def resolve(self, modules: Collection[str]) -> str:
        """The module this import runs: ``X.n`` when it is a submodule, else ``X``."""
        return self.target if self.target in modules or not self.parent else self.parent


def python_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        if not any(path.is_relative_to(g) for g in GENERATED):
            yield path


def module_name(path: Path, package: str, folder: Path) -> str:
    parts = [package, *path.relative_to(folder).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, module: str) -> list[Import]:
    """Every import in ``path``; ``top_level`` when it runs at import time."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    drop = child.level - 1 if is_package else child.level
                    anchor = anchor[: len(anchor) - drop] if drop else anchor
                    base = ".".join([*anchor, base] if base else anchor)
                found.extend(
                    Import(module, f"{base}.{a.name}", child.lineno, top, parent=base)
                    for a in child.names
                )
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt, top)
            else:
                visit(child, top)

    visit(tree, True)
    return found


def package_imports(packages: dict[str, Path]) -> dict[str, list[Import]]:
    """Module name -> its imports, for every module of ``packages`` that exists here."""
    result: dict[str, list[Import]] = {}
    for package, folder in packages.items():
        for path in python_files(folder):
            name = module_name(path, package, folder)
            result[name] = imports_of(path, name)
    return result


def root_of(target: str) -> str:
    return target.split(".", 1)[0]


def forbidden(packages: dict[str, Path], banned: set[str]) -> list[str]:
    """``module:line -> target`` for every import of a package in ``banned``."""
    return sorted(
        f"{imp.module}:{imp.line} -> {imp.target}"
        for imports in package_imports(packages).values()
        for imp in imports
        if root_of(imp.target) in banned - {root_of(imp.module)}
    )


def cycles(modules: dict[str, list[Import]], *, deferred: bool = True) -> list[list[str]]:
    """The cycles (strongly connected components) of the import graph; with
    ``deferred=False`` only of the imports that run at module level."""
    graph = {
        name: sorted(
            {i.resolve(modules) for i in imports if deferred or i.top_level}
            & (modules.keys() - {name})
        )
        for name, imports in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


# --- the rules ----------------------------------------------------------------------


def test_the_kernel_imports_no_service_and_not_the_cli() -> None:
    banned = {*SERVICES, *CLI}
    assert forbidden(KERNEL, banned) == []
    assert forbidden({"tests": ROOT / "libs/tests"}, banned) == []


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_imports_no_other_service_and_not_the_cli(service: str) -> None:
    assert forbidden({service: SERVICES[service]}, {*SERVICES, *CLI}) == []


@pytest.mark.parametrize("package", sorted({**KERNEL, **SERVICES, **CLI}))
def test_no_import_cycle_inside_a_package(package: str) -> None:
    folder = {**KERNEL, **SERVICES, **CLI}[package]
    if not folder.is_dir():
        pytest.skip(f"{folder} is not in this checkout")
    assert cycles(package_imports({package: folder})) == []


# --- the checker itself ---------------------------------------------------------------


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def test_the_checker_finds_cycles_top_level_and_deferred(tmp_path: Path) -> None:
    pkg = write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "from . import c\n",
            "c.py": "from .a import thing\n",
            "d.py": "def f():\n    from pkg import e\n",
            "e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n"
            "import pkg.d\n",
        },
    )
    assert cycles(package_imports({"pkg": pkg}), deferred=False) == [["pkg.a", "pkg.b", "pkg.c"]]
    # d -> e only inside a function: a cycle all the same, found unless asked for top level.
    assert cycles(package_imports({"pkg": pkg})) == [
        ["pkg.a", "pkg.b", "pkg.c"],
        ["pkg.d", "pkg.e"],
    ]


def test_the_checker_finds_an_upward_import(tmp_path: Path) -> None:
    kernel = write(
        tmp_path / "llmesh",
        {"__init__.py": "", "x.py": "def f():\n    import llmesh_gateway.app\n"},
    )
    assert forbidden({"llmesh": kernel}, set(SERVICES)) == ["llmesh.x:2 -> llmesh_gateway.app"]
