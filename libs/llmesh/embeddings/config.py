"""The BERT hyper-parameters read from a model folder's ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmesh.kernel.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class BertConfig:
    """Shape of a BERT encoder (defaults: all-MiniLM-L6-v2)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BertConfig:
        """Build from a Hugging Face ``config.json`` mapping; unknown keys are ignored."""
        if raw.get("model_type", "bert") != "bert":
            raise InvalidArgument(f"not a BERT model: model_type={raw.get('model_type')!r}")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise InvalidArgument(f"unsupported hidden_act {raw.get('hidden_act')!r}")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise InvalidArgument("only absolute position embeddings are supported")
        fields = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        config = cls(**fields)
        if config.hidden_size % config.num_attention_heads:
            raise InvalidArgument("hidden_size is not a multiple of num_attention_heads")
        return config

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        """Read ``config.json``."""
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
