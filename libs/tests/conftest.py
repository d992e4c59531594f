"""Fixtures for the kernel tests: the echo proto compiled at test time."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
from grpc_tools import protoc

HERE = Path(__file__).parent / "kerneltest"
VENDORED = Path(__file__).resolve().parents[2] / "third_party" / "protovalidate"
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # makes the kerneltest package importable


@pytest.fixture(scope="session")
def echo_pb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("echo_pb")
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{HERE}",
            f"-I{VENDORED}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(HERE / "echo.proto"),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def echo_pb(echo_pb_dir: Path) -> tuple[ModuleType, ModuleType]:
    from kerneltest.echo_server import load_pb

    return load_pb(echo_pb_dir)
