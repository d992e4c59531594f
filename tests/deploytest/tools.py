"""The deployment linters: pinned in pyproject.toml ([tool.llmesh.deploy-lint]) and
installed into .venv-deploy by `make test` (they conflict with the project's pins)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_BIN = ROOT / ".venv-deploy" / "bin"
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production", "production-cuda")
KUBERNETES_VERSION = "1.37.0"
# Writes the dev overlay's credentials (never committed) where kustomize reads them.
DEV_SECRETS_SCRIPT = K8S / "overlays" / "dev" / "gen-credentials.sh"


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


def generate_dev_secrets(out: Path) -> None:
    """Run the dev overlay's credential generator (gen-credentials.sh) into ``out``."""
    result = run([DEV_SECRETS_SCRIPT, out], timeout=30)
    assert result.returncode == 0, f"gen-credentials.sh failed:\n{result.stderr}"


def render(overlay: str) -> str:
    """`kubectl kustomize deploy/k8s/overlays/<overlay>`; fails the test on an error.

    Renders a copy of deploy/k8s with the dev credentials generated into it, as an
    operator does before applying (the working tree's git-ignored secrets/ is left alone).
    """
    with tempfile.TemporaryDirectory(prefix="llmesh-k8s-") as tmp:
        k8s = Path(tmp) / "k8s"
        shutil.copytree(K8S, k8s, ignore=shutil.ignore_patterns("secrets"))
        generate_dev_secrets(k8s / "overlays" / "dev" / "secrets")
        result = run([tool("kubectl"), "kustomize", k8s / "overlays" / overlay])
    assert result.returncode == 0, f"kustomize {overlay} failed:\n{result.stderr}"
    return result.stdout
