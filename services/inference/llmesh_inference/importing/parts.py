"""What a reader hands the writer: config, weights and tokenizer files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ModelParts:
    config: dict[str, Any]
    weights: dict[str, Any]
    """MLX arrays by parameter name (Hugging Face/mlx-lm names)."""
    quantization: dict[str, Any]
    """Per-layer quantization ({} when every weight is a float)."""
    files: dict[str, str]
    """Text files to write (tokenizer.json, tokenizer_config.json, ...)."""
    copy: dict[str, Path]
    """Files copied as they are (name in the folder → source path)."""
    source_types: dict[str, int]
    """Tensor count per source type (GGUF Q4_1, F32, ...; safetensors BF16, ...)."""
    architecture: str
