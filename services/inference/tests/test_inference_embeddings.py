"""MiniLM embeddings in MLX against an independent NumPy forward pass, plus behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from llmesh.kernel.errors import InvalidArgument, NotFound
from llmesh_inference.embeddings import (
    MAX_TOKENS,
    MiniLMEmbedder,
    packaged_model_dir,
)

LONG_TEXT = " ".join(
    f"Incident {n}: the replica db-replica-{n:02d} fell behind the primary by {n * 7} seconds "
    "after a vacuum, so the on-call engineer paused the nightly batch job."
    for n in range(1, 25)
)
TEXTS = [
    "The cat sat on the mat.",
    "Deploy 3.14.2 failed with E4417 on db-replica-07; rolled back within ten minutes.",
    "",
    "Ünïcödé façade — naïve café, 東京 and emoji 🚀 are tokenised too.",
    "short",
]


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26); NumPy has none and SciPy is not a dep."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: np.ndarray = sign * (1.0 - poly * np.exp(-a * a))
    return out


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + 1e-12) * weight + bias
    return out


class NumpyMiniLM:
    """The sentence-transformers recipe written out plainly: one text at a time, float64."""

    def __init__(self, folder: Path) -> None:
        self.w = {
            k: v.astype(np.float64) for k, v in load_file(folder / "model.safetensors").items()
        }
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=256)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def embed_one(self, text: str) -> np.ndarray:
        w = self.w
        ids = np.array(self.ids(text))
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        for i in range(6):
            p = f"encoder.layer.{i}."

            def dense(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q, k, v = (
                dense(x, f"attention.self.{m}").reshape(n, 12, 32).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(32.0)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, 384)
            x = _layer_norm(
                x + dense(ctx, "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            h = dense(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            x = _layer_norm(
                x + dense(h, "output.dense"),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
            )
        pooled: np.ndarray = x.mean(0)
        return pooled / float(np.linalg.norm(pooled))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.embed_one(t) for t in texts])


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder.load()


@pytest.fixture(scope="module")
def reference() -> NumpyMiniLM:
    return NumpyMiniLM(packaged_model_dir())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.sum(a * b, axis=1) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    )
    return out


def test_batched_vectors_match_numpy_reference(
    embedder: MiniLMEmbedder, reference: NumpyMiniLM
) -> None:
    # One padded batch: lengths from 2 ([CLS][SEP] for "") to ~30 tokens.
    assert len(embedder.plan_batches(TEXTS)) == 1
    lengths = embedder.count_tokens(TEXTS)
    assert min(lengths) == 2 and max(lengths) > 20
    result = embedder.embed(TEXTS)
    assert result.vectors.shape == (len(TEXTS), 384)
    assert result.vectors.dtype == np.float32
    assert result.token_count == sum(lengths)
    assert result.truncated == 0
    cosines = _cosines(result.vectors.astype(np.float64), reference.embed(TEXTS))
    assert cosines.min() >= 0.999, cosines
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_long_text_truncated_to_256_tokens_matches_reference(
    embedder: MiniLMEmbedder, reference: NumpyMiniLM
) -> None:
    full = Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json"))
    full.no_truncation()
    full.no_padding()
    assert len(full.encode(LONG_TEXT).ids) > 2 * MAX_TOKENS  # really longer than the window
    assert embedder.count_tokens([LONG_TEXT]) == [MAX_TOKENS]
    result = embedder.embed([LONG_TEXT])
    assert result.truncated == 1
    assert result.token_count == MAX_TOKENS
    cosine = _cosines(result.vectors.astype(np.float64), reference.embed([LONG_TEXT]))[0]
    assert cosine >= 0.999, cosine


def test_split_batches_give_the_same_vectors(embedder: MiniLMEmbedder) -> None:
    one_batch = embedder.embed(TEXTS)
    plan = embedder.plan_batches(TEXTS, max_batch_tokens=40)
    assert len(plan) >= 3
    assert all(b.cost <= 40 or len(b.indices) == 1 for b in plan)
    split = embedder.embed(TEXTS, max_batch_tokens=40)
    assert split.token_count == one_batch.token_count
    assert _cosines(split.vectors, one_batch.vectors).min() >= 0.99999


def test_tokenizer_wordpiece_ids_and_specials(embedder: MiniLMEmbedder) -> None:
    assert embedder.tokenize(["Hello world"]) == [[101, 7592, 2088, 102]]
    assert embedder.count_tokens(["", "Hello world"]) == [2, 4]


def test_paraphrase_ranks_above_unrelated(embedder: MiniLMEmbedder) -> None:
    query = "How do I reset my password?"
    candidates = [
        "The quarterly revenue grew by twelve percent.",
        "Steps to recover access when you forget your login credentials.",
        "A recipe for slow-cooked lamb with rosemary.",
    ]
    vectors = embedder.embed([query, *candidates]).vectors
    scores = vectors[1:] @ vectors[0]
    assert int(np.argmax(scores)) == 1, scores
    assert scores[1] - max(scores[0], scores[2]) > 0.2, scores


def test_model_metadata(embedder: MiniLMEmbedder) -> None:
    assert embedder.name == "all-minilm-l6-v2"
    assert embedder.dimensions == 384
    assert embedder.max_tokens == 256


def test_empty_input_gives_empty_matrix(embedder: MiniLMEmbedder) -> None:
    result = embedder.embed([])
    assert result.vectors.shape == (0, 384)
    assert result.token_count == 0


def test_bad_inputs_raise_domain_errors(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"texts\[1\]"):
        embedder.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="max_batch_tokens"):
        embedder.embed(["ok"], max_batch_tokens=0)
    with pytest.raises(NotFound, match=r"model\.safetensors"):
        MiniLMEmbedder.load(tmp_path)
