"""``make mutate``'s driver: result parsing, the score, and its per-target selection."""

from __future__ import annotations

from pathlib import Path

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
