"""``make mutate``'s driver: result parsing, the score, and its per-target selection."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmesh.tools import mutation

ROOT = Path(__file__).resolve().parents[2]

RESULTS = """
    llmesh.kernel.errors.x_invalid__mutmut_1: killed
    llmesh.kernel.errors.x_invalid__mutmut_2: survived
    llmesh.kernel.errors.x_invalid__mutmut_3: survived
    llmesh.kernel.errors.x_invalid__mutmut_4: timeout
    llmesh.kernel.errors.x_invalid__mutmut_5: no tests
    llmesh.kernel.errors.x_invalid__mutmut_6: suspicious
not a result line
"""


def test_parse_results_groups_names_by_status() -> None:
    by_status = mutation.parse_results(RESULTS)
    assert by_status["killed"] == ["llmesh.kernel.errors.x_invalid__mutmut_1"]
    assert len(by_status["survived"]) == 2
    assert by_status["no tests"] == ["llmesh.kernel.errors.x_invalid__mutmut_5"]
    assert by_status["suspicious"] == ["llmesh.kernel.errors.x_invalid__mutmut_6"]


def test_score_counts_untested_as_surviving_and_leaves_equivalents_out() -> None:
    by_status = mutation.parse_results(RESULTS)
    equivalent = {"llmesh.kernel.errors.x_invalid__mutmut_3": "cannot differ"}
    summary = mutation.score(by_status, equivalent)
    assert summary["killed"] == 2  # killed + timeout
    assert summary["survived"] == 1
    assert summary["no_tests"] == 1
    assert summary["mutants"] == 4
    assert summary["score_pct"] == 50.0
    assert summary["equivalent"] == ["llmesh.kernel.errors.x_invalid__mutmut_3"]
    assert summary["other"] == {"suspicious": 1}
    assert mutation.score({}, {})["score_pct"] is None


def test_overall_adds_the_targets() -> None:
    totals = mutation.overall(
        {"a": {"mutants": 10, "killed": 9}, "b": {"mutants": 30, "killed": 27}}
    )
    assert totals == {"mutants": 40, "killed": 36, "score_pct": 90.0}


def test_every_target_and_its_tests_exist() -> None:
    for target, tests in mutation.TESTS.items():
        assert target.startswith(("llmesh/", "llmesh_gateway/"))
        prefix = "libs/" if target.startswith("llmesh/") else "services/gateway/"
        assert (ROOT / prefix / target).is_file(), target
        assert tests, target
        for test in tests:
            assert (ROOT / test).is_file(), test
    assert set(mutation.DESELECT) <= set(mutation.TESTS)
    modules = {t.removesuffix(".py").replace("/", ".") for t in mutation.TESTS}
    for name, reason in mutation.EQUIVALENT.items():
        assert name.rsplit(".", 1)[0] in modules, name
        assert reason


def test_stage_dir_names_the_module() -> None:
    assert mutation.stage_dir_for("llmesh_gateway/auth.py").name == "llmesh_gateway.auth"


def test_stage_writes_one_target_with_its_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mutation, "STAGE", tmp_path / ".mutation")
    monkeypatch.setitem(mutation.DESELECT, "llmesh/kernel/errors.py", ["-k", "not slow"])
    target = "llmesh/kernel/errors.py"
    where = mutation.stage(target, mutation.TESTS[target])
    assert where == tmp_path / ".mutation" / "llmesh.kernel.errors"
    assert (where / "src/llmesh/kernel/errors.py").is_file()
    assert (where / "src/llmesh_gateway/auth.py").is_file()
    assert (where / "tests/libs/tests/test_kernel_errors_mutants.py").is_file()
    assert (where / "tests/libs/tests/conftest.py").is_file()
    assert (where / "conftest.py").is_file()
    config = tomllib.loads((where / "pyproject.toml").read_text())
    mutmut = config["tool"]["mutmut"]
    assert mutmut["only_mutate"] == ["src/llmesh/kernel/errors.py"]
    assert mutmut["pytest_add_cli_args_test_selection"] == [
        "tests/libs/tests/test_kernel_errors_mutants.py"
    ]
    assert mutmut["pytest_add_cli_args"][-2:] == ["-k", "not slow"]
    assert mutmut["process_isolation"] == "forkserver"
    # Staging again starts from a clean directory.
    (where / "stale").write_text("x")
    mutation.stage(target, mutation.TESTS[target])
    assert not (where / "stale").exists()


class _Run:
    def __init__(self, results: str) -> None:
        self.results = results
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, args: list[str], **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return SimpleNamespace(returncode=0, stdout=self.results)


def test_main_runs_each_target_and_writes_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(mutation, "STAGE", tmp_path)
    monkeypatch.setattr(mutation, "stage", lambda t, tests: mutation.stage_dir_for(t))
    run = _Run(RESULTS)
    monkeypatch.setattr(mutation.subprocess, "run", run)
    monkeypatch.setenv("COVERAGE_PROCESS_CONFIG", "x")
    target = "llmesh/kernel/errors.py"
    mutation.stage_dir_for(target).mkdir(parents=True)
    assert mutation.main(["--only", target, "--max-children", "1"]) == 0
    (mutmut_run, kwargs), (results, _) = run.calls
    assert mutmut_run[-4:] == ["mutmut", "run", "--max-children", "1"]
    assert kwargs["cwd"] == mutation.stage_dir_for(target)
    assert "COVERAGE_PROCESS_CONFIG" not in kwargs["env"]
    assert results[-4:] == ["mutmut", "results", "--all", "true"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["overall"] == {"mutants": 5, "killed": 2, "score_pct": 40.0}
    assert summary["targets"][target]["survived"] == 2
    assert '"score_pct": 40.0' in capsys.readouterr().out


def test_main_rescore_reads_staged_results_without_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mutation, "STAGE", tmp_path)
    run = _Run(RESULTS)
    monkeypatch.setattr(mutation.subprocess, "run", run)
    staged = mutation.stage_dir_for("llmesh/kernel/context.py")
    (staged / "mutants").mkdir(parents=True)
    assert mutation.main(["--rescore"]) == 0
    assert [args[-3:] for args, _ in run.calls] == [["results", "--all", "true"]]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["targets"]) == ["llmesh/kernel/context.py"]


def test_main_refuses_an_unknown_target() -> None:
    with pytest.raises(SystemExit) as info:
        mutation.main(["--only", "llmesh/kernel/nope.py"])
    assert info.value.code == 2
