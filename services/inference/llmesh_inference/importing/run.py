"""One import from start to finish: read, write, smoke-check."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmesh_inference.importing.dtype import resolve
from llmesh_inference.importing.errors import ModelImportError
from llmesh_inference.importing.folder import parameter_count, write_folder
from llmesh_inference.importing.from_gguf import read_gguf
from llmesh_inference.importing.from_hf import read_hf_folder
from llmesh_inference.importing.parts import ModelParts

# (what is happening, done, total): total 0 for a step without a count.
Reporter = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ImportResult:
    path: Path
    record: dict[str, Any]
    smoke_text: str | None
    seconds: float


def default_name(source: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct-q4_1``."""
    stem = source.name if source.is_dir() else source.stem
    return re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-") or "model"


def _read(source: Path, dtype: str, report: Reporter) -> tuple[ModelParts, str]:
    def progress(done: int, total: int) -> None:
        report("converting tensors", done, total)

    if source.is_dir():
        return read_hf_folder(source, dtype=dtype, progress=progress), "huggingface"
    if not source.is_file():
        raise ModelImportError(f"{source} does not exist (give a .gguf file or a model folder)")
    with source.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelImportError(f"{source} is neither a GGUF file nor a model folder")
    return read_gguf(source, dtype=dtype, progress=progress), "gguf"


def import_model(
    source: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    smoke: bool = True,
    report: Reporter | None = None,
) -> ImportResult:
    """Import ``source`` (GGUF file or HF folder) as ``models_dir/name``."""
    started = time.perf_counter()
    say: Reporter = report or (lambda _step, _done, _total: None)
    stored = resolve(dtype)
    source = source.expanduser().resolve()
    folder_name = name or default_name(source)
    if "/" in folder_name or folder_name.startswith(".") or not folder_name:
        raise ModelImportError(f"--name {folder_name!r} must be a plain folder name")
    dest = models_dir / folder_name
    if dest.exists() and not overwrite:
        raise ModelImportError(f"{dest} exists: choose another --name or pass --force")
    parts, kind = _read(source, stored, say)
    config = parts.config
    context = int(config.get("max_position_embeddings") or 0)
    record = {
        "source": str(source),
        "source_format": kind,
        "source_types": parts.source_types,
        "architecture": parts.architecture,
        "parameters": parameter_count(parts.weights, parts.quantization),
        "dtype": stored,
        "context_length": context,
    }
    files = {"config.json": json.dumps(config, indent=2) + "\n", **parts.files}
    write_folder(
        dest,
        files=files,
        weights=parts.weights,
        copy=parts.copy,
        record=record,
        overwrite=overwrite,
        on_step=lambda step: say(step, 0, 0),
    )
    text = None
    if smoke:
        from llmesh_inference.importing.smoke import smoke_check

        say("smoke check: a short greedy generation", 0, 0)
        text = smoke_check(dest)
    return ImportResult(dest, record, text, time.perf_counter() - started)
