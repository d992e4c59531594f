"""GGUF file → the parts of an mlx-lm folder (config, weights, tokenizer files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmesh_inference.importing.config import gguf_config
from llmesh_inference.importing.errors import ModelImportError
from llmesh_inference.importing.gguf_file import GGUFFile
from llmesh_inference.importing.gguf_weights import Progress, gguf_weights
from llmesh_inference.importing.parts import ModelParts
from llmesh_inference.importing.tokenizer import add_bos, build_tokenizer


def _tokenizer_files(meta: dict[str, Any], context: int) -> dict[str, str]:
    tokens = list(meta["tokenizer.ggml.tokens"])

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    bos, eos, pad = token("bos_token_id"), token("eos_token_id"), token("padding_token_id")
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": token("unknown_token_id"),
        "add_bos_token": add_bos(meta),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context,
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        tokenizer_config["chat_template"] = str(template)
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad)) if v}
    generation = {
        k: int(meta[f"tokenizer.ggml.{k}"])
        for k in ("bos_token_id", "eos_token_id")
        if meta.get(f"tokenizer.ggml.{k}") is not None
    }
    return {
        "tokenizer.json": build_tokenizer(meta),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
        "generation_config.json": json.dumps(generation, indent=2) + "\n",
    }


def read_gguf(path: Path, *, dtype: str, progress: Progress | None = None) -> ModelParts:
    """Everything an mlx-lm folder needs, read from the GGUF file at ``path``."""
    source = GGUFFile(path)
    source.check_types()
    meta = source.metadata()
    names = {t.name for t in source.tensors()}
    if "token_embd.weight" not in names:
        raise ModelImportError(f"{path.name} has no token_embd.weight: not a language model")
    vocab = len(meta.get("tokenizer.ggml.tokens") or [])
    config = gguf_config(meta, tied="output.weight" not in names, vocab_size=vocab)
    weights, quantization = gguf_weights(source, config, dtype=dtype, progress=progress)
    if quantization:
        config["quantization"] = {"group_size": 32, "bits": 4, **quantization}
    files = _tokenizer_files(meta, int(config["max_position_embeddings"]))
    return ModelParts(
        config=config,
        weights=weights,
        quantization=quantization,
        files=files,
        copy={},
        source_types=source.type_counts(),
        architecture=str(meta["general.architecture"]),
    )
