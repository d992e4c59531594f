"""``MiniLMEmbedder``: all-MiniLM-L6-v2 sentence embeddings computed in MLX."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from llmesh.kernel.errors import InvalidArgument

from .batching import Batch, plan_batches
from .bert import BertEncoder, load_encoder
from .config import BertConfig
from .files import model_files
from .tokenize import TextTokenizer

MODEL_NAME = "all-minilm-l6-v2"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
DEFAULT_MAX_BATCH_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """Vectors for a list of texts, in input order."""

    vectors: np.ndarray  # float32, shape (len(texts), dimensions), each row unit length
    token_count: int  # tokens embedded (special tokens included, padding not)
    truncated: int = 0  # how many texts were cut to ``max_tokens``


class MiniLMEmbedder:
    """Synchronous sentence embedder; call it from one thread (the MLX thread)."""

    name: str = MODEL_NAME

    def __init__(
        self,
        encoder: BertEncoder,
        tokenizer: TextTokenizer,
        *,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ) -> None:
        if max_batch_tokens < 1:
            raise InvalidArgument(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self._encoder = encoder
        self._tokenizer = tokenizer
        self.max_batch_tokens = max_batch_tokens

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        max_tokens: int = MAX_TOKENS,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        dtype: mx.Dtype = mx.float32,
    ) -> MiniLMEmbedder:
        """Load weights and tokenizer from ``path`` (default: the packaged model folder)."""
        files = model_files(path)
        config = BertConfig.from_file(files.config)
        if not 2 <= max_tokens <= config.max_position_embeddings:
            raise InvalidArgument(
                f"max_tokens must be in [2, {config.max_position_embeddings}], got {max_tokens}"
            )
        encoder = load_encoder(config, files.weights, dtype=dtype)
        tokenizer = TextTokenizer.from_file(files.tokenizer, max_tokens=max_tokens)
        return cls(encoder, tokenizer, max_batch_tokens=max_batch_tokens)

    @property
    def dimensions(self) -> int:
        """Length of each vector (384)."""
        return self._encoder.config.hidden_size

    @property
    def max_tokens(self) -> int:
        """Tokens per text after truncation, special tokens included (256)."""
        return self._tokenizer.max_tokens

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated, with [CLS]/[SEP]."""
        return self._tokenizer.encode(texts).ids

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text costs once truncated (what ``embed`` would process)."""
        return [len(ids) for ids in self._tokenizer.encode(texts).ids]

    def plan_batches(
        self, texts: Sequence[str], *, max_batch_tokens: int | None = None
    ) -> list[Batch]:
        """How ``embed`` would split ``texts``: batches whose padded cost fits the budget."""
        return plan_batches(
            self.count_tokens(texts), max_batch_tokens=self._budget(max_batch_tokens)
        )

    def embed(
        self, texts: Sequence[str], *, max_batch_tokens: int | None = None
    ) -> EmbeddingResult:
        """Embed ``texts`` (any number; batched under the token budget), in input order."""
        encoded = self._tokenizer.encode(texts)
        ids = encoded.ids
        lengths = [len(row) for row in ids]
        vectors = np.zeros((len(ids), self.dimensions), dtype=np.float32)
        for batch in plan_batches(lengths, max_batch_tokens=self._budget(max_batch_tokens)):
            input_ids, mask = self._tokenizer.pad([ids[i] for i in batch.indices])
            pooled = self._encoder(mx.array(input_ids), mx.array(mask))
            vectors[list(batch.indices)] = np.array(pooled.astype(mx.float32), copy=False)
        return EmbeddingResult(
            vectors=vectors, token_count=sum(lengths), truncated=sum(encoded.truncated)
        )

    def _budget(self, max_batch_tokens: int | None) -> int:
        return self.max_batch_tokens if max_batch_tokens is None else max_batch_tokens
