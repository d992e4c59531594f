"""Generate the Python (with .pyi) and Node stubs from ``protos/``.

Run as ``python -m llmesh.tools.genprotos`` (``make protos``). Output is build
output: ``libs/llmesh/v1/``, ``libs/buf/validate/validate_pb2.py*`` and ``clients/node/gen/``
are not committed.
``libs/buf/validate/validate_pb2.py`` comes from the vendored schema in
``third_party/protovalidate``: the ``protovalidate`` package imports it as
``buf.validate.validate_pb2`` but no wheel ships it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = ROOT / "protos"
PY_OUT = ROOT / "libs"
PY_PACKAGE = PY_OUT / "llmesh" / "v1"
VENDORED = ROOT / "third_party" / "protovalidate"
VALIDATE_PROTO = "buf/validate/validate.proto"
VALIDATE_PACKAGE = PY_OUT / "buf"
BUF = ROOT / "node_modules" / ".bin" / "buf"


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    argv = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{VENDORED}", f"-I{include}", *args]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(argv)}")


def generate_python() -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2_grpc.py`` and their ``.pyi`` stubs."""
    if PY_PACKAGE.exists():
        shutil.rmtree(PY_PACKAGE)
    protos = sorted(PROTO_ROOT.glob("llmesh/v1/*.proto"))
    rel = [str(p.relative_to(PROTO_ROOT)) for p in protos]
    plugin_dir = Path(sys.executable).parent
    _protoc(
        [
            f"--python_out={PY_OUT}",
            f"--grpc_python_out={PY_OUT}",
            f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={PY_OUT}",
            f"--mypy_grpc_out={PY_OUT}",
            *rel,
        ]
    )
    (PY_PACKAGE / "__init__.py").write_text('"""Generated llmesh.v1 stubs (build output)."""\n')
    (PY_PACKAGE / "py.typed").write_text("")
    generate_validate()
    return protos


def generate_validate() -> None:
    """Write ``libs/buf/validate/validate_pb2.py`` (+ ``.pyi``) from the vendored schema.

    The ``buf`` and ``buf.validate`` package files are committed (so an install finds
    the package before the first generation); only the ``validate_pb2`` files are output.
    """
    for stale in (VALIDATE_PACKAGE / "validate").glob("validate_pb2.py*"):
        stale.unlink()
    plugin_dir = Path(sys.executable).parent
    _protoc(
        [
            f"--python_out={PY_OUT}",
            f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
            f"--mypy_out={PY_OUT}",
            VALIDATE_PROTO,
        ]
    )


# Standard schemas the Node client needs besides ours: the google.rpc error details and
# grpc.health.v1. Taken from the descriptors of the pinned Python packages that ship them
# (googleapis-common-protos, grpcio-health-checking), so nothing is vendored twice.
STANDARD_SCHEMAS = (
    "google.rpc.status_pb2",
    "google.rpc.error_details_pb2",
    "grpc_health.v1.health_pb2",
)


def standard_image(path: Path) -> list[str]:
    """Write the standard schemas (with their imports) to ``path`` as a
    FileDescriptorSet, for ``buf generate``; returns the files to generate."""
    import importlib

    from google.protobuf import descriptor_pb2
    from google.protobuf.descriptor import FileDescriptor

    image = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        for dependency in file.dependencies:
            add(dependency)
        seen.add(file.name)
        file.CopyToProto(image.file.add())

    wanted = [importlib.import_module(name).DESCRIPTOR for name in STANDARD_SCHEMAS]
    for file in wanted:
        add(file)
    path.write_bytes(image.SerializeToString())
    return [file.name for file in wanted]


def generate_node() -> None:
    """Write ECMAScript stubs (protobuf-es) into ``clients/node/gen``: ours from
    ``protos/``, then the standard schemas of :data:`STANDARD_SCHEMAS`."""
    if not BUF.exists():
        raise SystemExit("buf is missing: run `npm ci` (make setup does)")
    out = ROOT / "clients" / "node" / "gen"
    if out.exists():
        shutil.rmtree(out)
    subprocess.run([str(BUF), "generate"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "standard.binpb"
        paths = [arg for name in standard_image(image) for arg in ("--path", name)]
        subprocess.run([str(BUF), "generate", str(image), *paths], cwd=ROOT, check=True)


def main() -> None:
    protos = generate_python()
    generate_node()
    print(f"generated stubs for {len(protos)} proto files into {PY_PACKAGE} and clients/node/gen")


if __name__ == "__main__":
    main()
