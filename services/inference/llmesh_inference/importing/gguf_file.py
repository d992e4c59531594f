"""Reading a GGUF file: metadata, tensor types, weights in the mlx-lm layout.

The ``gguf`` package (llama.cpp's own reader) memory-maps the file and dequantizes
every quantization type it knows. Tensors arrive in llama.cpp's names and layout;
:func:`mlx_name` maps the names to mlx-lm's, and :func:`unpermute_rows` undoes the
row permutation llama.cpp's converter applies to the Q and K projections of
Llama-family models (its RoPE pairs neighbouring dimensions, Hugging Face's pairs
the two halves of each head). Forget it and the model answers EOS at once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmesh_inference.importing.errors import ModelImportError

# Types kept as they are when the import keeps quantized weights (they map exactly onto
# MLX's affine quantization with group size 32) or read directly as floats.
FLOAT_TYPES = ("F32", "F16", "BF16")
AFFINE_TYPES = ("Q4_0", "Q4_1", "Q8_0")
# Types read through ``gguf``'s dequantization (to floats, whatever the import's dtype).
DEQUANTIZED_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "Q5_0", "Q5_1")
SUPPORTED_TYPES = FLOAT_TYPES + AFFINE_TYPES + DEQUANTIZED_TYPES

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_TOP = re.compile(r"(\w+)\.(weight|bias)$")


def mlx_name(gguf_name: str) -> str:
    """mlx-lm's parameter name for a GGUF tensor name (``blk.3.attn_q.weight`` → ...)."""
    block = _BLOCK.match(gguf_name)
    if block and block.group(2) in _LAYER_NAMES:
        layer, part, kind = block.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    top = _TOP.match(gguf_name)
    if top and top.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[top.group(1)]}.{top.group(2)}"
    raise ModelImportError(
        f"tensor {gguf_name!r} has no place in a Llama/Mistral/Qwen2 model: "
        "this architecture is not supported by the importer"
    )


def unpermute_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (rows = output features, any trailing shape)."""
    out = rows.shape[0]
    return (
        rows.reshape(heads, out // heads // 2, 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the file: its GGUF name, type name, shape (rows first) and raw data."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    raw: np.ndarray
    type_id: Any

    def dequantized(self) -> np.ndarray:
        """The values as float32, in row-major (rows, columns) order."""
        import gguf

        if self.type_name in ("F32",):
            return np.asarray(self.raw, dtype=np.float32).reshape(self.shape)
        values = gguf.quants.dequantize(self.raw, self.type_id)
        return np.asarray(values, dtype=np.float32).reshape(self.shape)


class GGUFFile:
    """A GGUF file opened read-only (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        import gguf

        try:
            self._reader = gguf.GGUFReader(str(path))
        except (ValueError, OSError) as exc:
            raise ModelImportError(f"{path} is not a readable GGUF file: {exc}") from None
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value (string, number, bool or list), or ``default``."""
        field = self._reader.get_field(key)
        if field is None:
            return default
        value = field.contents()
        return default if value is None else value

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ModelImportError(f"{self.path.name} lacks the metadata key {key!r}")
        return value

    def metadata(self, prefix: str = "") -> dict[str, Any]:
        """Every metadata value whose key starts with ``prefix``."""
        return {
            key: self.get(key)
            for key in self._reader.fields
            if key.startswith(prefix) and not key.startswith("GGUF.")
        }

    @property
    def architecture(self) -> str:
        return str(self.require("general.architecture"))

    def tensors(self) -> Iterator[GGUFTensor]:
        for tensor in self._reader.tensors:
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            yield GGUFTensor(
                tensor.name, tensor.tensor_type.name, shape, tensor.data, tensor.tensor_type
            )

    def type_counts(self) -> dict[str, int]:
        return dict(Counter(t.type_name for t in self.tensors()))

    def check_types(self) -> None:
        """Refuse a file with a tensor type the importer cannot read, naming it."""
        for tensor in self.tensors():
            if tensor.type_name not in SUPPORTED_TYPES:
                raise ModelImportError(
                    f"tensor {tensor.name} is stored as {tensor.type_name}, which the importer "
                    f"does not read (supported: {', '.join(SUPPORTED_TYPES)}); "
                    "re-quantize the model to one of those with llama.cpp's llama-quantize"
                )
