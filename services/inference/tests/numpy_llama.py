"""An exact float64 NumPy forward pass of a Llama GGUF, written for the golden tests.

It reads the GGUF with the ``gguf`` package and follows llama.cpp's own layout, not
the importer's: Q/K rows stay permuted and RoPE rotates neighbouring pairs (llama.cpp's
"normal" RoPE), so it checks the importer's unpermutation independently. Weights are
dequantized by ``gguf`` and every product runs in float64: the tight reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class NumpyLlama:
    def __init__(self, path: Path) -> None:
        import gguf

        reader = gguf.GGUFReader(str(path))

        def meta(key: str) -> float:
            field = reader.get_field(f"llama.{key}")
            assert field is not None, key
            return float(field.contents())

        self.layers = int(meta("block_count"))
        self.heads = int(meta("attention.head_count"))
        self.kv_heads = int(meta("attention.head_count_kv"))
        self.eps = meta("attention.layer_norm_rms_epsilon")
        self.theta = meta("rope.freq_base")
        self.tensors: dict[str, np.ndarray] = {}
        for tensor in reader.tensors:
            shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            self.tensors[tensor.name] = np.asarray(values, dtype=np.float32).reshape(shape)

    def w(self, name: str) -> np.ndarray:
        return self.tensors[name].astype(np.float64)

    def _norm(self, x: np.ndarray, weight: str) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.w(weight)

    def _rope(self, x: np.ndarray) -> np.ndarray:
        """Rotate neighbouring pairs (2i, 2i+1) of each head by pos * theta^(-2i/d)."""
        tokens, _, dim = x.shape
        freqs = self.theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
        angles = np.arange(tokens, dtype=np.float64)[:, None] * freqs[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def logits(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """Logits (float64) at ``positions`` of the sequence ``ids``."""
        x = self.w("token_embd.weight")[ids]
        tokens = len(ids)
        mask = np.triu(np.full((tokens, tokens), -np.inf), k=1)
        group = self.heads // self.kv_heads
        for i in range(self.layers):
            p = f"blk.{i}."
            h = self._norm(x, p + "attn_norm.weight")
            q = (h @ self.w(p + "attn_q.weight").T).reshape(tokens, self.heads, -1)
            k = (h @ self.w(p + "attn_k.weight").T).reshape(tokens, self.kv_heads, -1)
            v = (h @ self.w(p + "attn_v.weight").T).reshape(tokens, self.kv_heads, -1)
            q, k = self._rope(q), self._rope(k)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(q.shape[-1]) + mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attended = np.einsum("hts,shd->thd", scores, v).reshape(tokens, -1)
            x = x + attended @ self.w(p + "attn_output.weight").T
            h = self._norm(x, p + "ffn_norm.weight")
            gate = h @ self.w(p + "ffn_gate.weight").T
            up = h @ self.w(p + "ffn_up.weight").T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ self.w(p + "ffn_down.weight").T
        h = self._norm(x[positions], "output_norm.weight")
        head = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        result: np.ndarray = h @ self.w(head).T
        return result
