"""Which dtype an import stores, by backend (measured, see docs/models.md).

On a Linux CPU MLX's quantized matmul is slow (~2 GFLOP/s whatever the shape) and
float16/bfloat16 are slower than float32, so the import dequantizes to float32:
SmolLM2-135M decodes at ~12.6 tok/s there in float32 against ~6.2 with the Q4_1
tensors kept as MLX 4-bit. On Metal and CUDA quantized weights read 4-8 times fewer
bytes per token, and those backends have fast quantized kernels: keep them.
"""

from __future__ import annotations

CHOICES = ("auto", "float32", "float16", "bfloat16", "quantized")


def best_dtype() -> str:
    """The stored dtype for ``auto`` on the default MLX device of this machine."""
    import mlx.core as mx

    return "float32" if mx.default_device() == mx.cpu else "quantized"


def resolve(dtype: str) -> str:
    if dtype not in CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(CHOICES)}")
    return best_dtype() if dtype == "auto" else dtype
