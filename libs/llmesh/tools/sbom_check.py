"""Checks the SBOMs ``make sbom`` writes (docs/quality.md).

Each file must be valid CycloneDX JSON (the schema shipped with cyclonedx-python-lib,
strict) and name every dependency we pin, at its pinned version: pyproject.toml's
dependencies and extras (markers evaluated for this machine) in the Python SBOM,
package.json's (and its workspaces') in the Node SBOM.

Run with the audit tools' interpreter, which has cyclonedx-python-lib:
``PYTHONPATH=libs .venv-audit/bin/python -m llmesh.tools.sbom_check sbom/``.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def normalize(name: str) -> str:
    """PEP 503 name normalisation (``PyJWT`` == ``pyjwt``, ``a_b`` == ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def python_pins(pyproject: Mapping[str, Any]) -> dict[str, str]:
    """name -> pinned version of every requirement that applies on this machine."""
    from packaging.requirements import Requirement

    project = pyproject["project"]
    own = normalize(project["name"])
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    pins: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        if normalize(req.name) == own:
            continue  # llmesh[production-local]: the extra itself is listed above
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[normalize(req.name)] = exact[0]
    return pins


def node_pins(root: Path) -> dict[str, str]:
    """name -> version of package.json's dependencies and its workspaces' (exact pins;
    a range is checked by name only, as '')."""
    manifest = json.loads((root / "package.json").read_text())
    manifests = [manifest]
    for pattern in manifest.get("workspaces", []):
        manifests += [json.loads(p.read_text()) for p in root.glob(f"{pattern}/package.json")]
    pins: dict[str, str] = {}
    for m in manifests:
        for section in ("dependencies", "devDependencies", "optionalDependencies"):
            for name, spec in m.get(section, {}).items():
                exact = re.fullmatch(r"=?v?(\d+\.\d+\.\d+[\w.+-]*)", spec)
                pins[name] = exact.group(1) if exact else ""
    return pins


def components(bom: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(name, version) of every component, nested ones too; npm scopes as ``@s/name``."""
    found: set[tuple[str, str]] = set()

    def walk(items: Iterable[Mapping[str, Any]]) -> None:
        for c in items:
            name = f"{c['group']}/{c['name']}" if c.get("group") else c["name"]
            found.add((name, str(c.get("version", ""))))
            walk(c.get("components", []))

    walk(bom.get("components", []))
    return found


def missing(pins: Mapping[str, str], present: set[tuple[str, str]], *, python: bool) -> list[str]:
    """The pins the SBOM lacks, as ``name==version``."""
    key = normalize if python else (lambda n: n)
    have = {(key(n), v) for n, v in present}
    names = {n for n, _ in have}
    out = []
    for name, version in sorted(pins.items()):
        if (version and (key(name), version) not in have) or (not version and name not in names):
            out.append(f"{name}=={version}" if version else name)
    return out


def schema_errors(text: str) -> list[str]:
    """Strict CycloneDX 1.6 JSON schema validation; [] when valid."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True)
    if errors is None:
        return []
    many = errors if isinstance(errors, Iterable) else [errors]
    return [str(e)[:300] for e in many]


def check(path: Path, pins: Mapping[str, str], *, python: bool) -> list[str]:
    text = path.read_text()
    problems = schema_errors(text)
    bom = json.loads(text)
    if bom.get("bomFormat") != "CycloneDX":
        problems.append("bomFormat is not CycloneDX")
    absent = missing(pins, components(bom), python=python)
    if absent:
        problems.append("pinned dependencies absent: " + ", ".join(absent))
    count = len(components(bom))
    verdict = "OK" if not problems else "FAILED"
    print(
        f"{path}: CycloneDX {bom.get('specVersion')}, {count} components, "
        f"{len(pins) - len(absent)}/{len(pins)} pinned dependencies present: {verdict}"
    )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = Path(args[0]) if args else ROOT / "sbom"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    problems = check(out / "python.cdx.json", python_pins(pyproject), python=True)
    problems += check(out / "node.cdx.json", node_pins(ROOT), python=False)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
