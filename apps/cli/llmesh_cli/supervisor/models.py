"""The tiny default model of local mode, created on first run with progress output."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


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
