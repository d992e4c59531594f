"""Linters over deploy/k8s and the Dockerfiles: every rendered object validated against
the API schemas of a current Kubernetes release (kubernetes-validate, strict), checkov's
Kubernetes and Dockerfile policies (exceptions only with a reason, in place), hadolint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from deploytest.tools import KUBERNETES_VERSION, OVERLAYS, ROOT, render, run, tool

DOCKERFILES = sorted(ROOT.glob("services/*/Dockerfile*"))
# Custom resources kubernetes-validate has no schema for (tests/test_deploy_k8s.py checks
# how they are wired).
CUSTOM_KINDS = {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for overlay in OVERLAYS:
        files[overlay] = out / f"{overlay}.yaml"
        files[overlay].write_text(render(overlay))
    return files


def _validate(path: Path) -> tuple[int, str]:
    result = run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION, path]
    )
    return result.returncode, result.stdout + result.stderr


def test_every_object_validates_against_the_kubernetes_schemas(
    manifests: dict[str, Path],
) -> None:
    for overlay, path in manifests.items():
        code, output = _validate(path)
        assert code == 0, f"{overlay}:\n{output}"
        kinds = {(d["apiVersion"], d["kind"]) for d in yaml.safe_load_all(path.read_text()) if d}
        unchecked = [line for line in output.splitlines() if "Couldn't find schema" in line]
        assert all(any(k in line for _, k in CUSTOM_KINDS) for line in unchecked), unchecked
        assert kinds - CUSTOM_KINDS, overlay


def test_the_validator_rejects_a_bad_object(tmp_path: Path) -> None:
    # A control: an unknown field and a string where an integer belongs must fail.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec:\n  replicas: two\n  selector: {matchLabels: {a: b}}\n"
        "  template:\n    metadata: {labels: {a: b}}\n"
        "    spec: {containers: [{name: x, image: 'x:1', probe: {}}]}\n"
    )
    code, output = _validate(bad)
    assert code != 0, output


def test_checkov_finds_nothing_unjustified(manifests: dict[str, Path]) -> None:
    args: list[str | Path] = [tool("checkov"), "--framework", "kubernetes", "dockerfile"]
    for path in [*manifests.values(), *DOCKERFILES]:
        args += ["-f", path]
    result = run([*args, "--output", "json", "--quiet", "--compact"], timeout=300)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for report in reports
        for c in report["results"].get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    skipped = [c for report in reports for c in report["results"].get("skipped_checks", [])]
    for check in skipped:  # every exception says why, where it is made
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) > 20, f"{check['check_id']} skipped without a reason"
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    assert result.returncode == 0, result.stderr[-2000:]


def test_hadolint_passes_every_dockerfile() -> None:
    assert len(DOCKERFILES) == 5  # gateway, registry, memory, inference (+ CUDA)
    result = run([tool("hadolint"), "--no-color", *DOCKERFILES])
    assert result.returncode == 0, result.stdout + result.stderr
