"""The coverage gate of ``make test`` and its ratchet (docs/quality.md).

``python -m llmesh.tools.coverage_gate check``: reads the combined coverage data,
prints lines and branches overall and per area (kernel, gateway, OpenAI door ...) and
the least-covered modules, and exits 1 when lines or branches, floored to one decimal,
fall below the baseline recorded in ``.coverage-baseline.json``.

``python -m llmesh.tools.coverage_gate ratchet``: raises the baseline to the current
figures floored to one decimal; it never lowers it (exit 1 if the current figures are
below). Flooring to one decimal keeps the gate steady against the hundredths that
timing-dependent branches move from run to run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE = Path(".coverage-baseline.json")
# Area name -> path fragment of its files (as coverage records them).
AREAS: dict[str, str] = {
    "kernel": "/llmesh/kernel/",
    "gateway (edge)": "/llmesh_gateway/",
    "openai door (edge)": "/llmesh_openai/",
    "registry": "/llmesh_registry/",
    "memory": "/llmesh_memory/",
    "inference": "/llmesh_inference/",
    "cli": "/llmesh_cli/",
}
LEAST_COVERED = 12


@dataclass(frozen=True)
class Figures:
    """Covered and total lines and branches of a set of files."""

    lines: int
    lines_total: int
    branches: int
    branches_total: int

    @property
    def lines_pct(self) -> float:
        return 100.0 * self.lines / self.lines_total if self.lines_total else 100.0

    @property
    def branches_pct(self) -> float:
        return 100.0 * self.branches / self.branches_total if self.branches_total else 100.0

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.lines + other.lines,
            self.lines_total + other.lines_total,
            self.branches + other.branches,
            self.branches_total + other.branches_total,
        )

    def line(self) -> str:
        return (
            f"lines {self.lines_pct:5.1f}% ({self.lines}/{self.lines_total}), "
            f"branches {self.branches_pct:5.1f}% ({self.branches}/{self.branches_total})"
        )


ZERO = Figures(0, 0, 0, 0)


def floor1(value: float) -> float:
    """``value`` floored to one decimal (91.27 -> 91.2; float noise tolerated)."""
    return math.floor(value * 10 + 1e-6) / 10


def figures_of(summary: Mapping[str, Any]) -> Figures:
    """Figures from one ``summary`` object of coverage's JSON report."""
    return Figures(
        int(summary["covered_lines"]),
        int(summary["num_statements"]),
        int(summary.get("covered_branches", 0)),
        int(summary.get("num_branches", 0)),
    )


def per_file(report: Mapping[str, Any]) -> dict[str, Figures]:
    return {name: figures_of(f["summary"]) for name, f in report["files"].items()}


def areas(files: Mapping[str, Figures]) -> dict[str, Figures]:
    out = {name: ZERO for name in AREAS}
    for path, figures in files.items():
        slashed = "/" + path.replace("\\", "/")
        for name, fragment in AREAS.items():
            if fragment in slashed:
                out[name] = out[name] + figures
    return out


def least_covered(files: Mapping[str, Figures], count: int = LEAST_COVERED) -> list[str]:
    """The modules with the most uncovered lines + branches, worst first."""

    def missed(f: Figures) -> int:
        return (f.lines_total - f.lines) + (f.branches_total - f.branches)

    ranked = sorted(files.items(), key=lambda item: (-missed(item[1]), item[0]))
    return [
        f"  {missed(f):5d} missed  {f.lines_pct:5.1f}% lines {f.branches_pct:5.1f}% branches  {p}"
        for p, f in ranked[:count]
        if missed(f)
    ]


def read_baseline(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {"lines": 0.0, "branches": 0.0}
    data = json.loads(path.read_text())
    return {"lines": float(data["lines"]), "branches": float(data["branches"])}


def shortfalls(total: Figures, baseline: Mapping[str, float]) -> list[str]:
    """What falls below ``baseline`` (compared at one decimal), as sentences."""
    out = []
    for name, value in (("lines", total.lines_pct), ("branches", total.branches_pct)):
        if floor1(value) < baseline[name]:
            out.append(f"{name} {floor1(value):.1f}% < baseline {baseline[name]:.1f}%")
    return out


def ratcheted(total: Figures, baseline: Mapping[str, float]) -> dict[str, float]:
    """The new baseline: the current figures floored; raises ValueError if lower."""
    short = shortfalls(total, baseline)
    if short:
        raise ValueError("the ratchet only moves up: " + "; ".join(short))
    return {
        "lines": max(baseline["lines"], floor1(total.lines_pct)),
        "branches": max(baseline["branches"], floor1(total.branches_pct)),
    }


def json_report(data_file: Path, rcfile: str | bool = True) -> dict[str, Any]:
    """Coverage's JSON report of ``data_file`` (already combined); settings from
    ``rcfile`` (True: coverage's own search, which finds pyproject.toml)."""
    import coverage

    cov = coverage.Coverage(data_file=str(data_file), config_file=rcfile)
    cov.load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cov.json_report(outfile=str(out))
        report: dict[str, Any] = json.loads(out.read_text())
    return report


def render(report: Mapping[str, Any], baseline: Mapping[str, float]) -> list[str]:
    files = per_file(report)
    total = figures_of(report["totals"])
    lines = [
        f"coverage: {total.line()}",
        f"  baseline (.coverage-baseline.json): lines {baseline['lines']:.1f}%, "
        f"branches {baseline['branches']:.1f}%",
    ]
    lines += [f"  {name:20s} {f.line()}" for name, f in areas(files).items()]
    lines.append("least covered modules (uncovered lines + branches):")
    lines += least_covered(files)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coverage_gate", description=__doc__)
    parser.add_argument("command", choices=["check", "ratchet"])
    parser.add_argument("--data", type=Path, default=Path(".coverage"))
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--rcfile", default=None, help="coverage settings (default: pyproject)")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"coverage_gate: no coverage data at {args.data}: run `make test`", file=sys.stderr)
        return 1
    report = json_report(args.data, args.rcfile or True)
    baseline = read_baseline(args.baseline)
    total = figures_of(report["totals"])
    if args.command == "ratchet":
        try:
            new = ratcheted(total, baseline)
        except ValueError as exc:
            print(f"coverage_gate: {exc}", file=sys.stderr)
            return 1
        args.baseline.write_text(json.dumps(new, indent=2) + "\n")
        print(f"coverage baseline: lines {new['lines']:.1f}%, branches {new['branches']:.1f}%")
        return 0
    print("\n".join(render(report, baseline)))
    short = shortfalls(total, baseline)
    if short:
        print(
            "coverage_gate: FAILED, coverage fell below the ratchet: "
            + "; ".join(short)
            + ". Add tests for what you changed (docs/quality.md).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
