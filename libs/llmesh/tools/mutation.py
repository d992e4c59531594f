"""``make mutate``: mutmut over the kernel's errors, deadlines, config, interceptors and
contract validation and the gateway's auth (docs/quality.md). Not in CI: minutes.

mutmut 3 expects the code under ``./`` or ``src/`` and names mutants by module path, so
this driver stages a flat copy in ``.mutation/``: ``src/llmesh`` (libs/llmesh, generated
stubs included), ``src/llmesh_gateway``, the selected test modules and their
conftests, and a pyproject with the mutmut settings: every file is copied, only
:data:`TARGETS` are mutated, and each mutant runs only the tests that reached its
function (mutmut's own selection) among :data:`TESTS`. Other packages (llmesh_cli ...)
still import from the editable install.

``python -m llmesh.tools.mutation [--only kernel/errors.py ...] [--max-children N]``;
the summary (score, survivors) is printed and written to ``.mutation/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
STAGE = ROOT / ".mutation"
# Files mutated, relative to the staged src/.
TARGETS = [
    "llmesh/kernel/errors.py",
    "llmesh/kernel/reasons.py",
    "llmesh/kernel/context.py",
    "llmesh/kernel/config.py",
    "llmesh/kernel/interceptors.py",
    "llmesh/kernel/rulecheck.py",
    "llmesh/kernel/scalar_rules.py",
    "llmesh/kernel/violations.py",
    "llmesh/kernel/guards.py",
    "llmesh_gateway/auth.py",
    "llmesh_gateway/apikeys.py",
    "llmesh_gateway/principal.py",
    "llmesh_gateway/jwt_auth.py",
]
# The fast tests that exercise them (repository paths).
TESTS = [
    "libs/tests/test_kernel_context.py",
    "libs/tests/test_kernel_config.py",
    "libs/tests/test_kernel_server.py",
    "libs/tests/test_kernel_validation.py",
    "libs/tests/test_kernel_guards.py",
    "libs/tests/test_kernel_upstream.py",
    "libs/tests/test_kernel_metrics_http.py",
    "libs/tests/test_quality_mutation_kills.py",
    "services/gateway/tests/test_gateway_jwt.py",
    "services/gateway/tests/test_gateway_service.py",
    "services/gateway/tests/test_gateway_keys.py",
    "services/gateway/tests/test_gateway_validation.py",
]
SUPPORT = ["conftest.py", "libs/tests/conftest.py", "libs/tests/kerneltest"]
SUPPORT_GLOBS = ["services/gateway/tests/conftest.py", "services/gateway/tests/gatewaytest"]


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    elif source.is_file():
        shutil.copy2(source, target)


def stage(targets: Sequence[str], tests: Sequence[str]) -> Path:
    """Write the staged tree and its pyproject; returns the stage directory."""
    shutil.rmtree(STAGE, ignore_errors=True)
    _copy(ROOT / "libs" / "llmesh", STAGE / "src" / "llmesh")
    _copy(ROOT / "libs" / "buf", STAGE / "src" / "buf")
    _copy(ROOT / "services/gateway/llmesh_gateway", STAGE / "src" / "llmesh_gateway")
    staged_tests = []
    for test in [*tests, *SUPPORT, *SUPPORT_GLOBS]:
        source = ROOT / test
        if not source.exists():
            continue
        target = STAGE / "tests" / test
        _copy(source, target)
        if test in tests:
            staged_tests.append(f"tests/{test}")
    # libs/tests/conftest.py finds the vendored protovalidate schema two levels up.
    _copy(ROOT / "third_party" / "protovalidate", STAGE / "tests" / "third_party" / "protovalidate")
    (STAGE / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    pyproject = "\n".join(
        [
            "[tool.mutmut]",
            'source_paths = ["src/"]',
            f"only_mutate = {json.dumps([f'src/{t}' for t in targets])}",
            f"pytest_add_cli_args_test_selection = {json.dumps(staged_tests)}",
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]',
            # grpc is not fork-safe once a channel exists: fork workers from a clean server.
            'process_isolation = "forkserver"',
            'also_copy = ["tests/", "conftest.py"]',
            "",
            "[tool.pytest.ini_options]",
            'addopts = "--import-mode=importlib --strict-markers"',
            'asyncio_mode = "auto"',
            'asyncio_default_fixture_loop_scope = "function"',
            "timeout = 120",
            'markers = ["slow: takes more than a few seconds"]',
            "",
        ]
    )
    (STAGE / "pyproject.toml").write_text(pyproject)
    return STAGE


def summarize(stage_dir: Path) -> dict[str, object]:
    """Score and survivors from ``mutmut results --all true``."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=stage_dir,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    by_status: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            by_status.setdefault(status.strip(), []).append(name)
    killed = len(by_status.get("killed", [])) + len(by_status.get("timeout", []))
    survived = by_status.get("survived", [])
    scored = killed + len(survived)
    return {
        "killed_or_timeout": killed,
        "survived": len(survived),
        "no_tests": len(by_status.get("no tests", [])),
        "other": {k: len(v) for k, v in by_status.items() if k not in {"killed", "survived"}},
        "score_pct": round(100.0 * killed / scored, 1) if scored else None,
        "survivors": sorted(survived),
        "untested": sorted(by_status.get("no tests", [])),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mutation", description=__doc__)
    parser.add_argument("--only", nargs="*", help="targets, e.g. llmesh/kernel/errors.py")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    targets = args.only or TARGETS
    stage_dir = stage(targets, TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    run = subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)],
        cwd=stage_dir,
        env=env,
        check=False,
    )
    summary = summarize(stage_dir)
    (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "untested"}, indent=2))
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
