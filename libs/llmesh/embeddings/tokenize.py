"""WordPiece tokenisation for the embedder, via the ``tokenizers`` package."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from llmesh.kernel.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Encoded:
    """Token ids per text and whether each text was cut to fit."""

    ids: list[list[int]]
    truncated: list[bool]


class TextTokenizer:
    """Turns texts into token ids ([CLS] ... [SEP]), truncated to ``max_tokens``."""

    def __init__(self, tokenizer: Tokenizer, *, max_tokens: int, pad_id: int = 0) -> None:
        if max_tokens < 2:
            raise InvalidArgument(f"max_tokens must be >= 2, got {max_tokens}")
        # The shipped tokenizer.json pads and truncates to 128; we pad ourselves.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_id = pad_id

    @classmethod
    def from_file(cls, path: Path, *, max_tokens: int) -> TextTokenizer:
        """Read a ``tokenizer.json``."""
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers package raises plain Exception
            raise InvalidArgument(f"cannot read tokenizer {path}: {exc}") from exc
        pad = tokenizer.token_to_id("[PAD]")
        return cls(tokenizer, max_tokens=max_tokens, pad_id=0 if pad is None else pad)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Token ids of each text, special tokens included, at most ``max_tokens`` each."""
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidArgument(f"texts[{index}] is {type(text).__name__}, not str")
        if not texts:
            return Encoded(ids=[], truncated=[])
        encodings = self._tokenizer.encode_batch(list(texts))
        return Encoded(
            ids=[list(e.ids) for e in encodings],
            truncated=[bool(e.overflowing) for e in encodings],
        )

    def pad(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad to the longest: (input_ids int32, attention_mask int32), (batch, length)."""
        length = max((len(row) for row in ids), default=0)
        input_ids = np.full((len(ids), length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(ids), length), dtype=np.int32)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return input_ids, mask
