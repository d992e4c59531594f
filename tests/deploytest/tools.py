"""The deployment linters: pinned in pyproject.toml ([tool.llmesh.deploy-lint]) and
installed into .venv-deploy by `make test` (they conflict with the project's pins)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_BIN = ROOT / ".venv-deploy" / "bin"
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production", "production-cuda")
KUBERNETES_VERSION = "1.37.0"


def tool(name: str) -> Path:
    """Path of a deploy linter; skips (loudly) when `make deploy-tools` has not run.

    kubectl falls back to one on PATH (it carries kustomize).
    """
    pinned = DEPLOY_BIN / name
    if pinned.exists():
        return pinned
    if name == "kubectl" and (found := shutil.which("kubectl")):
        return Path(found)
    pytest.skip(
        f"{name} is not installed: run `make deploy-tools` (make test does) to create "
        ".venv-deploy with the pinned deployment linters"
    )


def run(args: list[str | Path], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


def render(overlay: str) -> str:
    """`kubectl kustomize deploy/k8s/overlays/<overlay>`; fails the test on an error."""
    result = run([tool("kubectl"), "kustomize", K8S / "overlays" / overlay])
    assert result.returncode == 0, f"kustomize {overlay} failed:\n{result.stderr}"
    return result.stdout
