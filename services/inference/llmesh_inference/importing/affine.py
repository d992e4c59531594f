"""GGUF's Q4_0, Q4_1 and Q8_0 blocks as MLX affine quantization, without loss.

Each of these types stores blocks of 32 values with a float16 scale ``d`` (and for
Q4_1 a float16 minimum ``m``): Q4_1 is ``d*q + m``, Q4_0 is ``d*(q - 8)``, Q8_0 is
``d*q`` with a signed ``q``. MLX's affine quantization with group size 32 stores
``scale*q + bias`` with an unsigned ``q`` packed little-endian into uint32 words, so
every block maps exactly: Q4_0 → bias ``-8d``, Q8_0 → ``q + 128`` and bias ``-128d``
(both exact in float16: powers of two). llama.cpp's Q4 block keeps values 0-15 in the
low nibbles and 16-31 in the high nibbles.
"""

from __future__ import annotations

import numpy as np

GROUP_SIZE = 32
BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-wide values (rows, n) into uint32 words (rows, n*bits/32)."""
    per_word = 32 // bits
    rows, n = q.shape
    grouped = q.reshape(rows, n // per_word, per_word).astype(np.uint32)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits).reshape(1, 1, per_word)
    packed: np.ndarray = np.bitwise_or.reduce(grouped << shifts, axis=2).astype(np.uint32)
    return packed


def to_affine(
    raw: np.ndarray, type_name: str, rows: int, columns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packed uint32 weight, float16 scales, float16 biases) of a Q4_0/Q4_1/Q8_0 tensor."""
    blocks = columns // GROUP_SIZE
    data = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, blocks, -1)
    d = data[:, :, 0:2].copy().view(np.float16).reshape(rows, blocks)
    if type_name == "Q4_1":
        bias = data[:, :, 2:4].copy().view(np.float16).reshape(rows, blocks)
        qs = data[:, :, 4:20]
    elif type_name == "Q4_0":
        bias = (d.astype(np.float32) * -8).astype(np.float16)
        qs = data[:, :, 2:18]
    elif type_name == "Q8_0":
        bias = (d.astype(np.float32) * -128).astype(np.float16)
        signed = data[:, :, 2:34].copy().view(np.int8)
        q = (signed.astype(np.int16) + 128).astype(np.uint8).reshape(rows, columns)
        return _pack(q, 8), d, bias
    else:
        raise ValueError(f"{type_name} has no exact affine form")
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(rows, columns)
    return _pack(q, 4), d, bias
