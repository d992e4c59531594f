"""A BERT encoder in MLX (embeddings + post-norm transformer layers) with mean pooling.

Only what sentence embedding needs: no pooler, no token-type input (all zeros), no
dropout. Weights load from a Hugging Face ``BertModel`` safetensors file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import mlx.core as mx
from mlx.nn.layers.activations import gelu
from mlx.nn.layers.base import Module
from mlx.nn.layers.embedding import Embedding
from mlx.nn.layers.linear import Linear
from mlx.nn.layers.normalization import LayerNorm

from llmesh.kernel.errors import InvalidArgument

from .config import BertConfig

_MASKED = -1e9  # added to attention scores of padding keys

# Hugging Face parameter names -> ours (first match wins; order matters).
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^bert\.", ""),
        (r"^embeddings\.LayerNorm\.", "embeddings.norm."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.\2."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
        (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
    )
)
_UNUSED = re.compile(r"^(bert\.)?(pooler\.|embeddings\.position_ids$)")


class _Embeddings(Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        positions = mx.arange(input_ids.shape[1])
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        normed: mx.array = self.norm(x)
        return normed


class _Layer(Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.heads = config.num_attention_heads
        self.scale = config.head_dim**-0.5
        self.query = Linear(hidden, hidden)
        self.key = Linear(hidden, hidden)
        self.value = Linear(hidden, hidden)
        self.attn_out = Linear(hidden, hidden)
        self.attn_norm = LayerNorm(hidden, eps=eps)
        self.ffn_in = Linear(hidden, config.intermediate_size)
        self.ffn_out = Linear(config.intermediate_size, hidden)
        self.ffn_norm = LayerNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, hidden = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)

        attended = mx.fast.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            scale=self.scale,
            mask=mask,
        )
        attended = attended.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = self.attn_norm(x + self.attn_out(attended))
        # BERT's "gelu" is the exact (erf) form, which mlx's gelu computes.
        out: mx.array = self.ffn_norm(x + self.ffn_out(gelu(self.ffn_in(x))))
        return out


class BertEncoder(Module):
    """BERT encoder returning mean-pooled, L2-normalised sentence vectors."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.embeddings = _Embeddings(config)
        self.layers = [_Layer(config) for _ in range(config.num_hidden_layers)]

    def hidden_states(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        """Last-layer states, shape (batch, length, hidden); ``attention_mask`` is 1/0."""
        additive = ((1.0 - attention_mask.astype(mx.float32)) * _MASKED)[:, None, None, :]
        x = self.embeddings(input_ids)
        additive = additive.astype(x.dtype)
        for layer in self.layers:
            x = layer(x, additive)
        return x

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        """Sentence vectors, shape (batch, hidden), float32, unit length."""
        states = self.hidden_states(input_ids, attention_mask).astype(mx.float32)
        weights = attention_mask.astype(mx.float32)[..., None]
        pooled = (states * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1e-9)
        norms = mx.linalg.norm(pooled, axis=-1, keepdims=True)
        return pooled / mx.maximum(norms, 1e-12)


def rename_weights(
    weights: Iterable[tuple[str, mx.array]],
) -> list[tuple[str, mx.array]]:
    """Hugging Face ``BertModel`` parameter names mapped to ours; unused ones dropped."""
    renamed: list[tuple[str, mx.array]] = []
    for original, value in weights:
        if _UNUSED.match(original):
            continue
        name = original
        for pattern, replacement in _RENAMES:
            name = pattern.sub(replacement, name, count=1)
        renamed.append((name, value))
    return renamed


def load_encoder(config: BertConfig, weights_path: Path, *, dtype: mx.Dtype) -> BertEncoder:
    """Build the encoder and load (and check) every parameter from a safetensors file."""
    model = BertEncoder(config)
    loaded = mx.load(str(weights_path))
    if not isinstance(loaded, dict):
        raise InvalidArgument(f"{weights_path} is not a safetensors weight file")
    try:
        model.load_weights(rename_weights(loaded.items()), strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"{weights_path} does not fit a BERT model: {exc}") from exc
    model.set_dtype(dtype)
    model.eval()
    mx.eval(model.parameters())  # type: ignore[no-untyped-call]
    return model
