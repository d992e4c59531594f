"""The coverage gate: figures, the one-decimal comparison, the ratchet that only moves
up (also across the baseline file's git history), and a check on real coverage data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmesh.tools.coverage_gate import (
    BASELINE,
    Figures,
    areas,
    floor1,
    least_covered,
    main,
    ratcheted,
    shortfalls,
)

ROOT = Path(__file__).resolve().parents[2]


def test_floor_to_one_decimal_tolerates_float_noise() -> None:
    assert floor1(91.27) == 91.2
    assert floor1(91.2) == 91.2
    assert floor1(91.19999999) == 91.2  # what 100 * 912 / 1000 may print as
    assert floor1(100.0) == 100.0


def test_shortfall_is_judged_at_one_decimal() -> None:
    baseline = {"lines": 90.0, "branches": 80.0}
    assert shortfalls(Figures(9004, 10000, 800, 1000), baseline) == []
    assert shortfalls(Figures(9000, 10000, 799, 1000), baseline) == [
        "branches 79.9% < baseline 80.0%"
    ]


def test_ratchet_raises_to_the_floored_figures_and_never_lowers() -> None:
    baseline = {"lines": 90.0, "branches": 80.0}
    assert ratcheted(Figures(9127, 10000, 8049, 10000), baseline) == {
        "lines": 91.2,
        "branches": 80.4,
    }
    with pytest.raises(ValueError, match=r"only moves up: lines 89\.9%"):
        ratcheted(Figures(8999, 10000, 900, 1000), baseline)


def test_areas_and_least_covered_modules() -> None:
    files = {
        "libs/llmesh/kernel/a.py": Figures(9, 10, 1, 2),
        "libs/llmesh/kernel/b.py": Figures(10, 10, 2, 2),
        "services/gateway/llmesh_gateway/c.py": Figures(1, 10, 0, 4),
    }
    by_area = areas(files)
    assert by_area["kernel"] == Figures(19, 20, 3, 4)
    assert by_area["gateway (edge)"].lines_pct == 10.0
    worst = least_covered(files)
    assert len(worst) == 2 and "llmesh_gateway/c.py" in worst[0]


def _measure(tmp_path: Path) -> tuple[Path, Path]:
    """Real coverage data of a tiny module: one branch of two taken."""
    (tmp_path / "tiny.py").write_text(
        "def f(x):\n    if x:\n        return 1\n    return 2\n\nf(1)\n"
    )
    rc = tmp_path / ".coveragerc"
    rc.write_text("[run]\nbranch = True\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--rcfile", str(rc), "tiny.py"],
        cwd=tmp_path,
        env=env,
        check=True,
    )
    return tmp_path / ".coverage", rc


def test_check_prints_the_figures_and_fails_below_the_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, rc = _measure(tmp_path)
    baseline = tmp_path / "baseline.json"
    args = ["--data", str(data), "--baseline", str(baseline), "--rcfile", str(rc)]
    assert main(["check", *args]) == 0  # no baseline yet: 0/0
    out = capsys.readouterr().out
    assert "coverage: lines  80.0% (4/5), branches  50.0% (1/2)" in out
    assert "least covered modules" in out and "tiny.py" in out
    assert main(["ratchet", *args]) == 0
    assert json.loads(baseline.read_text()) == {"lines": 80.0, "branches": 50.0}
    baseline.write_text(json.dumps({"lines": 80.0, "branches": 50.1}))
    assert main(["check", *args]) == 1
    assert "branches 50.0% < baseline 50.1%" in capsys.readouterr().err
    assert main(["ratchet", *args]) == 1  # never lowered
    assert json.loads(baseline.read_text())["branches"] == 50.1
    assert main(["check", "--data", str(tmp_path / "none"), "--baseline", str(baseline)]) == 1


def test_the_committed_baseline_only_ever_went_up() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("no git history here")
    log = subprocess.run(
        [git, "log", "--format=%H", "--reverse", "--", str(BASELINE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    previous = {"lines": 0.0, "branches": 0.0}
    for commit in log:
        shown = subprocess.run(
            [git, "show", f"{commit}:{BASELINE}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if shown.returncode != 0:
            continue  # the file was deleted in this commit
        current = json.loads(shown.stdout)
        for name in ("lines", "branches"):
            assert current[name] >= previous[name], f"{commit[:10]} lowered {name}"
        previous = current
    committed = json.loads((ROOT / BASELINE).read_text())
    assert committed["lines"] >= previous["lines"] and committed["branches"] >= previous["branches"]
