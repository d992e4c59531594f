"""Writing an mlx-lm model folder atomically, with the import's own record.

The folder is written under a temporary name beside the destination and renamed
into place last, so a crashed or interrupted import never leaves a half folder
that a worker would try to load. ``llmesh-model.json`` records where the model came
from and what was stored; ``llmesh models list`` shows it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECORD = "llmesh-model.json"


def read_record(folder: Path) -> dict[str, Any]:
    """The import record of a model folder ({} for a folder not made by an import)."""
    try:
        data = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def parameter_count(weights: dict[str, Any], quantization: dict[str, Any]) -> int:
    total = 0
    for name, value in weights.items():
        base = name.rsplit(".", 1)[0]
        if base in quantization:
            if name.endswith(".weight"):
                total += int(value.size) * 32 // int(quantization[base]["bits"])
            continue
        total += int(value.size)
    return total


def write_folder(
    dest: Path,
    *,
    files: dict[str, str],
    weights: dict[str, Any],
    copy: dict[str, Path] | None = None,
    record: dict[str, Any],
    overwrite: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Write ``files`` (name → text), ``model.safetensors`` and the record into ``dest``."""
    import mlx.core as mx

    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists (pass --force to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
        for name, path in (copy or {}).items():
            shutil.copyfile(path, tmp / name)
        if on_step is not None:
            on_step("writing model.safetensors")
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
