"""Dependency audit of ``make lint`` (docs/quality.md): pip-audit over the project's
virtualenv and ``npm audit`` over package-lock.json, minus the findings accepted, with a
reason, in ``security/accepted-vulnerabilities.toml``.

Exit 1 on any finding not accepted. When a vulnerability database cannot be reached
(pip-audit answers "not found" for a package it could not look up; npm audit gets an
error from the registry), the audit did NOT happen: a banner says so on stderr, every
time, and the exit code is 1 when ``LLMESH_AUDIT_REQUIRED=1`` (set it where the
databases are reachable) and 0 otherwise, so an offline machine can still lint.

``python -m llmesh.tools.dep_audit --pip-audit .venv-audit/bin/pip-audit --python .venv/bin/python``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
ACCEPTED = ROOT / "security" / "accepted-vulnerabilities.toml"


@dataclass(frozen=True)
class Finding:
    ecosystem: str  # "python" | "npm"
    package: str
    version: str
    ids: tuple[str, ...]  # the advisory id first, then aliases (CVE, GHSA ...)
    fix: str = ""

    def line(self) -> str:
        fix = f" (fixed in {self.fix})" if self.fix else ""
        return f"{self.ecosystem} {self.package} {self.version}: {', '.join(self.ids)}{fix}"


@dataclass
class Outcome:
    """What one audit found, and what it could not look at."""

    findings: list[Finding] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)  # packages, or the whole tool
    reason: str = ""
    audited: int = 0


def load_accepted(path: Path) -> dict[str, str]:
    """Accepted advisory id -> reason; every entry must say why."""
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    accepted: dict[str, str] = {}
    for entry in data.get("accepted", []):
        reason = str(entry.get("reason", "")).strip()
        if not reason:
            raise ValueError(f"{path}: accepted {entry.get('id')} has no reason")
        accepted[str(entry["id"])] = reason
    return accepted


def parse_pip_audit(report: Mapping[str, Any]) -> Outcome:
    outcome = Outcome()
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            outcome.unaudited.append(f"{dep['name']}")
            outcome.reason = str(dep["skip_reason"]).split(":")[0]
            continue
        outcome.audited += 1
        for vuln in dep.get("vulns", []):
            outcome.findings.append(
                Finding(
                    "python",
                    dep["name"],
                    dep.get("version", ""),
                    (vuln["id"], *vuln.get("aliases", [])),
                    ", ".join(vuln.get("fix_versions", [])),
                )
            )
    return outcome


def parse_npm_audit(report: Mapping[str, Any]) -> Outcome:
    outcome = Outcome()
    if "error" in report or "vulnerabilities" not in report:
        outcome.unaudited.append("every npm package")
        outcome.reason = str(report.get("message") or report.get("error") or "no report")
        return outcome
    outcome.audited = int(report.get("metadata", {}).get("dependencies", {}).get("total", 0))
    for name, vuln in report["vulnerabilities"].items():
        for via in vuln.get("via", []):
            if not isinstance(via, dict):
                continue  # a transitive mention; the advisory is listed on its own package
            url = str(via.get("url", ""))
            ghsa = url.rsplit("/", 1)[-1] if "/advisories/" in url else str(via.get("source"))
            outcome.findings.append(
                Finding("npm", name, str(via.get("range", "")), (ghsa, url) if url else (ghsa,))
            )
    return outcome


def run_pip_audit(pip_audit: str, python: str) -> Outcome:
    """pip-audit (PyPI's vulnerability data) over ``python``'s installed distributions."""
    frozen = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requirements = [line for line in frozen.splitlines() if "==" in line]
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requirements) + "\n")
        out = Path(tmp) / "audit.json"
        subprocess.run(
            [
                pip_audit,
                "--vulnerability-service",
                "pypi",
                "--requirement",
                str(req),
                "--no-deps",
                "--disable-pip",
                "--progress-spinner",
                "off",
                "--format",
                "json",
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,  # exit 1 means "found something": read the report
        )
        if not out.is_file():
            return Outcome(unaudited=["every Python package"], reason="pip-audit wrote no report")
        return parse_pip_audit(json.loads(out.read_text()))


def run_npm_audit(root: Path) -> Outcome:
    result = subprocess.run(
        ["npm", "audit", "--json"], cwd=root, capture_output=True, text=True, check=False
    )
    try:
        report = json.loads(result.stdout or "{}")
    except ValueError:
        report = {"error": result.stderr.strip()[-300:] or "npm audit printed no JSON"}
    return parse_npm_audit(report)


def verdict(
    outcomes: Mapping[str, Outcome], accepted: Mapping[str, str], *, required: bool
) -> tuple[int, list[str]]:
    """Exit code and the lines to print."""
    lines: list[str] = []
    failed = False
    seen: set[str] = set()
    for name, outcome in outcomes.items():
        open_findings = []
        for finding in outcome.findings:
            hit = next((i for i in finding.ids if i in accepted), None)
            if hit is None:
                open_findings.append(finding)
            else:
                seen.add(hit)
                lines.append(f"  accepted  {finding.line()}: {accepted[hit]}")
        lines.append(
            f"{name}: {outcome.audited} packages audited, {len(outcome.findings)} findings, "
            f"{len(open_findings)} not accepted"
        )
        lines += [f"  VULNERABLE  {f.line()}" for f in open_findings]
        failed |= bool(open_findings)
        if outcome.unaudited:
            shown = ", ".join(outcome.unaudited[:8])
            more = len(outcome.unaudited) - 8
            lines += [
                "!" * 78,
                f"!! {name}: AUDIT NOT PERFORMED for {len(outcome.unaudited)} packages "
                f"({shown}{f' and {more} more' if more > 0 else ''})",
                f"!! reason: {outcome.reason[:200]}",
                "!! the vulnerability database is unreachable from here; run `make lint` "
                "where it is (LLMESH_AUDIT_REQUIRED=1 fails on this)",
                "!" * 78,
            ]
            failed |= required
    stale = sorted(set(accepted) - seen)
    if stale:
        lines.append("accepted but not found (remove when the audit ran): " + ", ".join(stale))
    return (1 if failed else 0), lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dep_audit", description=__doc__)
    parser.add_argument("--pip-audit", required=True, help="the pip-audit executable")
    parser.add_argument("--python", required=True, help="the audited environment's python")
    parser.add_argument("--accepted", type=Path, default=ACCEPTED)
    args = parser.parse_args(argv)
    accepted = load_accepted(args.accepted)
    outcomes = {
        "pip-audit (PyPI)": run_pip_audit(args.pip_audit, args.python),
        "npm audit": run_npm_audit(ROOT),
    }
    required = os.environ.get("LLMESH_AUDIT_REQUIRED", "") == "1"
    code, lines = verdict(outcomes, accepted, required=required)
    loud = code or any(o.unaudited for o in outcomes.values())
    print("\n".join(lines), file=sys.stderr if loud else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
