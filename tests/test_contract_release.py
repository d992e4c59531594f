"""The release guard: the contracts of the latest release are frozen in a buf image, and
the working contracts must not break them (what `make buf-breaking` runs)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / "node_modules" / ".bin" / "buf"
RELEASES = ROOT / "protos" / "releases"


def _version(path: Path) -> tuple[int, ...]:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)\.binpb", path.name)
    assert match, f"{path.name}: release images are named vX.Y.Z.binpb"
    return tuple(int(part) for part in match.groups())


def latest_release() -> Path:
    images = sorted(RELEASES.glob("v*.binpb"), key=_version)
    assert images, "no release image in protos/releases (see docs/releasing.md)"
    return images[-1]


def test_the_package_version_is_the_latest_release() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert latest_release().name == f"v{version}.binpb"


@pytest.mark.skipif(not BUF.exists() or shutil.which("git") is None, reason="buf not installed")
def test_contracts_do_not_break_the_latest_release(tmp_path: Path) -> None:
    current = tmp_path / "current.binpb"
    subprocess.run([str(BUF), "build", "-o", str(current)], cwd=ROOT, check=True, timeout=120)
    result = subprocess.run(
        [str(BUF), "breaking", str(current), "--against", str(latest_release())],
        cwd=ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not BUF.exists(), reason="buf not installed")
def test_the_guard_catches_a_breaking_change(tmp_path: Path) -> None:
    """A removed field is reported: the check compares something real."""
    module = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", module, ignore=shutil.ignore_patterns("releases"))
    shutil.copytree(ROOT / "third_party", tmp_path / "third_party")
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    common = module / "llmesh" / "v1" / "common.proto"
    text = common.read_text()
    field = "  // Seed for sampling: the same seed, prompt and options give the same output.\n"
    assert field in text
    common.write_text(re.sub(re.escape(field) + r".*\n", "", text))
    broken = tmp_path / "broken.binpb"
    subprocess.run([str(BUF), "build", "-o", str(broken)], cwd=tmp_path, check=True, timeout=120)
    result = subprocess.run(
        [str(BUF), "breaking", str(broken), "--against", str(latest_release())],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "seed" in result.stdout
