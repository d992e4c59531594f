"""A Hugging Face-style folder (config.json, *.safetensors, tokenizer files) → parts.

The weights keep their Hugging Face names (mlx-lm's model classes sanitize them at
load) and are cast to the import's float dtype. The tokenizer must be a fast one
(``tokenizer.json``); its config, the special tokens, the generation config and a
separate ``chat_template.jinja`` are copied as they are.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmesh_inference.importing.errors import ModelImportError
from llmesh_inference.importing.parts import ModelParts

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


def read_hf_folder(
    path: Path, *, dtype: str, progress: Callable[[int, int], None] | None = None
) -> ModelParts:
    import mlx.core as mx

    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelImportError(f"{path} has no config.json: not a Hugging Face model folder")
    config = json.loads(config_path.read_text())
    model_type = str(config.get("model_type") or "")
    if not model_type or importlib.util.find_spec(f"mlx_lm.models.{model_type}") is None:
        raise ModelImportError(f"model_type {model_type!r} in {config_path} is not one mlx-lm runs")
    if "quantization_config" in config or "quantization" in config:
        raise ModelImportError(f"{path} holds a quantized export; import its float weights")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelImportError(f"{path} has no *.safetensors weights (PyTorch .bin is not read)")
    if not (path / "tokenizer.json").is_file():
        raise ModelImportError(f"{path} has no tokenizer.json (a fast tokenizer is needed)")
    target = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}.get(
        dtype, mx.float16
    )
    weights: dict[str, Any] = {}
    types: Counter[str] = Counter()
    for done, file in enumerate(files, start=1):
        loaded: Any = mx.load(str(file))
        for name, value in loaded.items():
            types[str(value.dtype).removeprefix("mlx.core.")] += 1
            weights[name] = (
                value.astype(target) if mx.issubdtype(value.dtype, mx.floating) else value
            )
        if progress is not None:
            progress(done, len(files))
    copy = {name: path / name for name in TOKENIZER_FILES if (path / name).is_file()}
    return ModelParts(
        config=config,
        weights=weights,
        quantization={},
        files={},
        copy=copy,
        source_types=dict(types),
        architecture=model_type,
    )
