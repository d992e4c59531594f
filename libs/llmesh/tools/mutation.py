"""``make mutate``: mutmut over the kernel's errors, deadlines, config, interceptors and
contract validation and the gateway's auth (docs/quality.md). Not in CI: minutes.

mutmut 3 expects the code under ``./`` or ``src/`` and names mutants by module path, so
this driver stages a flat copy per target in ``.mutation/<target>/``: ``src/llmesh``
(libs/llmesh, generated stubs included), ``src/llmesh_gateway``, that target's test
modules and their conftests, and a pyproject with the mutmut settings. Every file is
copied, only the target is mutated, and each mutant runs only the tests of
:data:`TESTS` for that target that reached its function during mutmut's stats run.
The selection per target is small and in-process on purpose: a module's mutants re-run
it hundreds of times. Targets run one after another (never two mutmut runs at once);
each keeps its stage, so a later ``--only`` run adds to the overall summary.

``python -m llmesh.tools.mutation [--only llmesh/kernel/errors.py ...] [--max-children N]``;
the summary (score per target and overall, survivors) is printed and written to
``.mutation/summary.json``. Mutants in :data:`EQUIVALENT` cannot change behaviour
(the reason is given with each) and are left out of the score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
STAGE = ROOT / ".mutation"
_LIBS = "libs/tests/"
_GW = "services/gateway/tests/"
# Files mutated (relative to the staged src/) and the fast tests that exercise each.
# reasons.py (an enum) and guards.py (a Protocol) have no function bodies to mutate:
# mutmut finds no mutant there and exits 1, so they are not targets.
TESTS: dict[str, list[str]] = {
    "llmesh/kernel/errors.py": [f"{_LIBS}test_kernel_errors_mutants.py"],
    "llmesh/kernel/context.py": [
        f"{_LIBS}test_kernel_context.py",
        f"{_LIBS}test_kernel_context_mutants.py",
    ],
    "llmesh/kernel/config.py": [
        f"{_LIBS}test_kernel_config.py",
        f"{_LIBS}test_kernel_config_mutants.py",
    ],
    "llmesh/kernel/interceptors.py": [f"{_LIBS}test_kernel_interceptors_mutants.py"],
    "llmesh/kernel/rulecheck.py": [f"{_LIBS}test_kernel_rules_mutants.py"],
    "llmesh/kernel/scalar_rules.py": [f"{_LIBS}test_kernel_rules_mutants.py"],
    "llmesh/kernel/violations.py": [f"{_LIBS}test_kernel_violations_mutants.py"],
    "llmesh_gateway/auth.py": [f"{_GW}test_gateway_auth_mutants.py"],
    "llmesh_gateway/principal.py": [f"{_GW}test_gateway_auth_mutants.py"],
    "llmesh_gateway/apikeys.py": [f"{_GW}test_gateway_apikeys_mutants.py"],
    "llmesh_gateway/jwt_auth.py": [f"{_GW}test_gateway_jwt_mutants.py"],
}
TARGETS = list(TESTS)
# Extra pytest arguments per target (e.g. ``["-k", "not postgres"]``) for a selection
# that includes a slow test. Tests against real servers, databases or subprocesses
# (test_kernel_server, test_gateway_service, test_gateway_keys ...) are in no selection:
# they would run again for every mutant their function reaches (~0.1 mutants/s); each
# target has in-process tests (``*_mutants.py``) that pin what those check.
DESELECT: dict[str, list[str]] = {}
# Mutants that cannot change behaviour: name -> why (left out of the score).
_PREFIX_DEFAULT = (
    "pydantic-settings gives every BaseSettings an env_prefix ('' at least): the .get "
    "default is never used"
)
_UTF8 = (
    "read_text(encoding=None/'UTF-8') reads UTF-8 as 'utf-8' does on a UTF-8 runtime; "
    "the locale cannot be switched in process to tell them apart"
)
_LOOPBACK_FAST_PATH = (
    "a fast path: ipaddress answers the same for this literal when the set misses it"
)
_I = "llmesh.kernel.interceptors.xǁKernelServerInterceptorǁ"
_METHOD_NAME = "a gRPC method name is /package.Service/Method: any right split of it ends in Method"
EQUIVALENT: dict[str, str] = {
    **{
        f"llmesh.kernel.interceptors.xǁDeadlinePolicyǁeffective__mutmut_{n}": _METHOD_NAME
        for n in (6, 9, 10)
    },
    **{
        f"{_I}_stream__mutmut_{n}": "sent is only tested for non-zero (after the first write)"
        for n in (27, 28, 29)
    },
    f"{_I}_stream__mutmut_9": "getattr('', 'aclose', None) is None, as for None",
    f"{_I}_stream__mutmut_65": "_finish does not read its ctx argument",
    f"{_I}_unary__mutmut_36": "_finish does not read its ctx argument",
    **{
        f"llmesh_gateway.apikeys.x_check_key_fields__mutmut_{n}": (
            "role=None leaves the enum field unset, which reads ROLE_UNSPECIFIED"
        )
        for n in (16, 18)
    },
    "llmesh_gateway.apikeys.xǁApiKeyManagerǁcreate__mutmut_32": (
        "secrets.token_urlsafe() defaults to 32 bytes"
    ),
    **{
        f"llmesh_gateway.apikeys.xǁApiKeyManagerǁverify__mutmut_{n}": (
            "the stand-in digest for an unknown id only evens out timing: any value "
            "compares unequal to a real HMAC"
        )
        for n in (37, 38)
    },
    **{
        f"llmesh.kernel.rulecheck.{name}__mutmut_{n}": (
            "Unsupported's text is never shown: _plan catches it and hands the type to "
            "protovalidate"
        )
        for name, numbers in (
            ("x__field_rules", (6, 7, 8, 9)),
            ("xǁRuleCheckerǁ_compile", (6, 7, 8)),
            ("xǁRuleCheckerǁ_element", (4, 5, 6, 7)),
            ("xǁRuleCheckerǁ_list", (11, 21, 22, 23)),
            ("xǁRuleCheckerǁ_map", (11, 28, 29, 30)),
        )
        for n in numbers
    },
    **{
        f"llmesh.kernel.rulecheck.xǁRuleCheckerǁ{name}__mutmut_{n}": (
            "unset item/key/value rules read as an empty FieldRules, which adds no check"
        )
        for name, n in (("_list", 44), ("_map", 51), ("_map", 57))
    },
    **{
        f"llmesh.kernel.rulecheck.xǁRuleCheckerǁ{name}__mutmut_{n}": (
            "sized() with no size rules runs the item check as is (one call more)"
        )
        for name, n in (("_list", 64), ("_map", 94))
    },
    **{
        f"llmesh.kernel.rulecheck.xǁRuleCheckerǁ_value__mutmut_{n}": (
            "google.protobuf types carry no buf.validate rules: planning them adds no check"
        )
        for n in (40, 41)
    },
    "llmesh.kernel.rulecheck.xǁRuleCheckerǁviolations__mutmut_6": (
        "the top-level path is only read through join_path or a truth test, where None "
        "and '' are the same"
    ),
    **{
        f"llmesh.kernel.rulecheck.x__element_zero__mutmut_{n}": (
            "bool and bytes items never reach it (their rules are unsupported: the type "
            "goes to protovalidate), and False == 0 for numbers"
        )
        for n in (4, 7, 8, 9, 10)
    },
    **{
        f"llmesh.kernel.scalar_rules.{name}__mutmut_{n}": (
            "Unsupported's text is never shown: _plan catches it and hands the type to "
            "protovalidate"
        )
        for name, n in (("x_scalar_rules", 6), ("x__bound_rules", 72))
    },
    **{
        f"llmesh.kernel.scalar_rules.x_scalar_rules__mutmut_{n}": (
            "a fast path: a string of at most max_bytes/4 characters cannot pass max_bytes "
            "bytes; the byte count decides either way"
        )
        for n in (53, 54, 55)
    },
    "llmesh_gateway.jwt_auth.xǁJwtVerifierǁ__init____mutmut_4": (
        "None and {} are both falsy: the only use is `if self._jwks`"
    ),
    **{
        f"llmesh_gateway.jwt_auth.xǁJwtVerifierǁverify__mutmut_{n}": (
            "PyJWT checks iss only when an issuer is passed; verify_iss defaults to true"
        )
        for n in (28, 29)
    },
    **{
        f"llmesh_gateway.jwt_auth.xǁJwtVerifierǁverify__mutmut_{n}": (
            "a missing tenant claim read as 'None' or 'XXXX' fails the lower-case tenant "
            "pattern as '' does"
        )
        for n in (72, 74, 75)
    },
    **{f"llmesh.kernel.config.x__format_errors__mutmut_{n}": _PREFIX_DEFAULT for n in (4, 6, 9)},
    **{f"llmesh.kernel.config.x_load_settings__mutmut_{n}": _PREFIX_DEFAULT for n in (5, 7, 10)},
    **{f"llmesh.kernel.config.x__read_config_file__mutmut_{n}": _UTF8 for n in (2, 4)},
    **{f"llmesh.kernel.config.x_read_secret_file__mutmut_{n}": _UTF8 for n in (2, 4)},
    **{f"llmesh.kernel.config.x_is_loopback__mutmut_{n}": _LOOPBACK_FAST_PATH for n in (4, 5, 6)},
}
SUPPORT = [
    "conftest.py",
    f"{_LIBS}conftest.py",
    f"{_LIBS}kerneltest",
    f"{_GW}conftest.py",
    f"{_GW}gatewaytest",
]


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    elif source.is_file():
        shutil.copy2(source, target)


def stage_dir_for(target: str) -> Path:
    """``.mutation/llmesh.kernel.errors`` for ``llmesh/kernel/errors.py``."""
    return STAGE / target.removesuffix(".py").replace("/", ".")


def stage(target: str, tests: Sequence[str]) -> Path:
    """Write the staged tree of one target and its pyproject; returns its directory."""
    where = stage_dir_for(target)
    shutil.rmtree(where, ignore_errors=True)
    _copy(ROOT / "libs" / "llmesh", where / "src" / "llmesh")
    _copy(ROOT / "libs" / "buf", where / "src" / "buf")
    _copy(ROOT / "services/gateway/llmesh_gateway", where / "src" / "llmesh_gateway")
    staged_tests = []
    for test in [*tests, *SUPPORT]:
        source = ROOT / test
        if not source.exists():
            continue
        _copy(source, where / "tests" / test)
        if test in tests:
            staged_tests.append(f"tests/{test}")
    # libs/tests/conftest.py finds the vendored protovalidate schema two levels up.
    _copy(ROOT / "third_party" / "protovalidate", where / "tests" / "third_party" / "protovalidate")
    (where / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    pyproject = "\n".join(
        [
            "[tool.mutmut]",
            'source_paths = ["src/"]',
            f"only_mutate = {json.dumps([f'src/{target}'])}",
            f"pytest_add_cli_args_test_selection = {json.dumps(staged_tests)}",
            "pytest_add_cli_args = "
            + json.dumps(["-p", "no:cacheprovider", "-q", "-x", *DESELECT.get(target, [])]),
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
    (where / "pyproject.toml").write_text(pyproject)
    return where


def parse_results(text: str) -> dict[str, list[str]]:
    """Mutant names by status from ``mutmut results --all true`` output."""
    by_status: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            by_status.setdefault(status.strip(), []).append(name)
    return by_status


def score(
    by_status: Mapping[str, Sequence[str]], equivalent: Mapping[str, str]
) -> dict[str, object]:
    """Killed (or timed out) over every mutant that is not equivalent; a mutant that no
    test reaches counts as surviving."""
    killed = len(by_status.get("killed", ())) + len(by_status.get("timeout", ()))
    survived = [n for n in by_status.get("survived", ()) if n not in equivalent]
    untested = [n for n in by_status.get("no tests", ()) if n not in equivalent]
    skipped = {"killed", "timeout", "survived", "no tests"}
    other = {k: len(v) for k, v in by_status.items() if k not in skipped}
    scored = killed + len(survived) + len(untested)
    return {
        "mutants": scored,
        "killed": killed,
        "survived": len(survived),
        "no_tests": len(untested),
        "equivalent": sorted(n for names in by_status.values() for n in names if n in equivalent),
        "other": other,
        "score_pct": round(100.0 * killed / scored, 1) if scored else None,
        "survivors": sorted(survived),
        "untested": sorted(untested),
    }


def summarize(stage_dir: Path) -> dict[str, object]:
    """The score of one staged target."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=stage_dir,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return score(parse_results(out), EQUIVALENT)


def overall(per_target: Mapping[str, Mapping[str, object]]) -> dict[str, object]:
    """Totals over the targets that have a summary."""
    mutants = sum(int(str(s["mutants"])) for s in per_target.values())
    killed = sum(int(str(s["killed"])) for s in per_target.values())
    return {
        "mutants": mutants,
        "killed": killed,
        "score_pct": round(100.0 * killed / mutants, 1) if mutants else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mutation", description=__doc__)
    parser.add_argument("--only", nargs="*", help="targets, e.g. llmesh/kernel/errors.py")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="recompute the summaries of the staged targets (after editing EQUIVALENT)",
    )
    args = parser.parse_args(argv)
    targets = args.only or TARGETS
    unknown = [t for t in targets if t not in TESTS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {TARGETS}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    status = 0
    for target in targets:
        if args.rescore:
            if (stage_dir_for(target) / "mutants").is_dir():
                summary = summarize(stage_dir_for(target))
                (stage_dir_for(target) / "summary.json").write_text(
                    json.dumps(summary, indent=2) + "\n"
                )
            continue
        stage_dir = stage(target, TESTS[target])
        run = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)],
            cwd=stage_dir,
            env=env,
            check=False,
        )
        status = status or run.returncode
        summary = summarize(stage_dir)
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    per_target = {
        t: json.loads((stage_dir_for(t) / "summary.json").read_text())
        for t in TARGETS
        if (stage_dir_for(t) / "summary.json").is_file()
    }
    result = {"overall": overall(per_target), "targets": per_target}
    (STAGE / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    brief = {
        t: {k: s[k] for k in ("mutants", "killed", "survived", "no_tests", "score_pct")}
        for t, s in per_target.items()
    }
    print(json.dumps({"overall": result["overall"], "targets": brief}, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
