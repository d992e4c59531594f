"""The dependency audit's verdict (findings, accepted ones, an unreachable database) and
the SBOM check's pins and presence test, on the tools' real report shapes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from llmesh.tools.dep_audit import (
    ACCEPTED,
    load_accepted,
    parse_npm_audit,
    parse_pip_audit,
    verdict,
)
from llmesh.tools.sbom_check import components, missing, node_pins, normalize, python_pins

ROOT = Path(__file__).resolve().parents[2]

PIP_AUDIT = {
    "dependencies": [
        {
            "name": "jinja2",
            "version": "3.1.2",
            "vulns": [
                {
                    "id": "GHSA-h5c8-rqwp-cp95",
                    "aliases": ["CVE-2024-22195"],
                    "fix_versions": ["3.1.3"],
                }
            ],
        },
        {"name": "grpcio", "version": "1.85.1", "vulns": []},
        {
            "name": "mlx",
            "skip_reason": "Dependency not found on PyPI and could not be audited: mlx (0.32.4)",
        },
    ]
}
NPM_AUDIT = {
    "vulnerabilities": {
        "undici": {
            "via": [
                {
                    "source": 1096586,
                    "url": "https://github.com/advisories/GHSA-c76h-2ccp-4975",
                    "range": "<5.28.5",
                }
            ]
        },
        "openai": {"via": ["undici"]},
    },
    "metadata": {"dependencies": {"total": 42}},
}


def test_findings_fail_unless_accepted_with_a_reason() -> None:
    outcomes = {"pip": parse_pip_audit(PIP_AUDIT), "npm": parse_npm_audit(NPM_AUDIT)}
    assert outcomes["pip"].audited == 2 and outcomes["pip"].unaudited == ["mlx"]
    assert outcomes["npm"].findings[0].ids[0] == "GHSA-c76h-2ccp-4975"
    code, lines = verdict(outcomes, {}, required=False)
    assert code == 1
    assert any("VULNERABLE  python jinja2 3.1.2: GHSA-h5c8-rqwp-cp95" in x for x in lines)
    accepted = {"CVE-2024-22195": "templates are ours", "GHSA-c76h-2ccp-4975": "dev only"}
    code, lines = verdict(outcomes, accepted, required=False)
    assert code == 0  # accepted by alias too; the unaudited package is only announced
    assert any("AUDIT NOT PERFORMED for 1 packages (mlx)" in x for x in lines)
    assert verdict(outcomes, accepted, required=True)[0] == 1
    code, lines = verdict(outcomes, {**accepted, "GHSA-old": "gone"}, required=False)
    assert lines[-1].endswith("GHSA-old")


def test_an_unreachable_npm_registry_is_never_a_clean_audit() -> None:
    refused = {"message": "405 Method Not Allowed - POST https://registry.npmjs.org/-/npm/v1"}
    outcome = parse_npm_audit(refused)
    assert outcome.unaudited == ["every npm package"] and "405" in outcome.reason
    code, lines = verdict({"npm": outcome}, {}, required=True)
    assert code == 1 and any("AUDIT NOT PERFORMED" in x for x in lines)


def test_the_accepted_file_parses_and_every_entry_needs_a_reason(tmp_path: Path) -> None:
    assert isinstance(load_accepted(ACCEPTED), dict)
    bad = tmp_path / "accepted.toml"
    bad.write_text('[[accepted]]\nid = "GHSA-x"\nreason = ""\n')
    with pytest.raises(ValueError, match="GHSA-x has no reason"):
        load_accepted(bad)


def test_sbom_pins_come_from_pyproject_and_package_json() -> None:
    pins = python_pins(tomllib.loads((ROOT / "pyproject.toml").read_text()))
    assert pins["grpcio"] == "1.85.1" and pins["pyjwt"] == "2.15.1"
    assert "llmesh" not in pins  # the dev extra's self-reference
    assert normalize("PyJWT") == "pyjwt" and normalize("psycopg_pool") == "psycopg-pool"
    node = node_pins(ROOT)
    manifest = json.loads((ROOT / "package.json").read_text())
    assert set(manifest["dependencies"]) <= set(node)


def test_sbom_presence_check_names_what_is_absent() -> None:
    bom = {
        "components": [
            {"name": "PyJWT", "version": "2.15.1"},
            {"group": "@bufbuild", "name": "buf", "version": "1.75.0"},
            {"name": "outer", "version": "1", "components": [{"name": "inner", "version": "2"}]},
        ]
    }
    present = components(bom)
    assert ("@bufbuild/buf", "1.75.0") in present and ("inner", "2") in present
    assert missing({"pyjwt": "2.15.1", "grpcio": "1.85.1"}, present, python=True) == [
        "grpcio==1.85.1"
    ]
    assert missing({"pyjwt": "2.15.0"}, present, python=True) == ["pyjwt==2.15.0"]
    assert missing({"@bufbuild/buf": "1.75.0", "inner": ""}, present, python=False) == []
