"""A GGUF file's tensors as mlx-lm weights, in the dtype the import stores.

``dtype`` is ``float32``/``float16``/``bfloat16`` (every tensor dequantized, exactly:
the values of Q4/Q8 blocks are representable in float32) or ``quantized`` (Q4_0, Q4_1
and Q8_0 tensors kept as MLX affine 4/8-bit with group size 32, bit for bit; every
other type dequantized to float16). Which is fastest depends on the backend; see
:mod:`llmesh_inference.importing.dtype`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from llmesh_inference.importing.affine import BITS, GROUP_SIZE, to_affine
from llmesh_inference.importing.config import architecture
from llmesh_inference.importing.gguf_file import GGUFFile, GGUFTensor, mlx_name, unpermute_rows

Progress = Callable[[int, int], None]


def _heads_to_unpermute(tensor: GGUFTensor, config: dict[str, Any]) -> int | None:
    if tensor.name.endswith("attn_q.weight") or tensor.name.endswith("attn_q.bias"):
        return int(config["num_attention_heads"])
    if tensor.name.endswith("attn_k.weight") or tensor.name.endswith("attn_k.bias"):
        return int(config["num_key_value_heads"])
    return None


def gguf_weights(
    source: GGUFFile,
    config: dict[str, Any],
    *,
    dtype: str,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights as MLX arrays by mlx-lm name, per-layer quantization config or {})."""
    import mlx.core as mx

    permuted = architecture(str(source.architecture)).permuted_qk
    tensors = list(source.tensors())
    float_dtype = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}.get(
        dtype, mx.float16
    )
    weights: dict[str, Any] = {}
    quantization: dict[str, Any] = {}
    for done, tensor in enumerate(tensors, start=1):
        name = mlx_name(tensor.name)
        heads = _heads_to_unpermute(tensor, config) if permuted else None
        keep = dtype == "quantized" and tensor.type_name in BITS and len(tensor.shape) == 2
        if keep:
            parts = to_affine(tensor.raw, tensor.type_name, *tensor.shape)
            if heads is not None:
                parts = tuple(unpermute_rows(p, heads) for p in parts)  # type: ignore[assignment]
            base = name.removesuffix(".weight")
            weights[name] = mx.array(parts[0])
            weights[f"{base}.scales"] = mx.array(parts[1])
            weights[f"{base}.biases"] = mx.array(parts[2])
            quantization[base] = {"group_size": GROUP_SIZE, "bits": BITS[tensor.type_name]}
        else:
            values = tensor.dequantized()
            if heads is not None:
                values = unpermute_rows(values, heads)
            weights[name] = mx.array(np.ascontiguousarray(values)).astype(float_dtype)
        if progress is not None:
            progress(done, len(tensors))
    return weights, quantization
