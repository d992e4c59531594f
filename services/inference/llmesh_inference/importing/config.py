"""mlx-lm ``config.json`` from GGUF metadata, for the architectures the importer knows.

``llama`` covers Llama 1-3, SmolLM and Mistral (llama.cpp converts Mistral's dense
models to ``llama``); ``qwen2`` is Qwen2/Qwen2.5. Llama-family Q/K rows are stored
permuted by llama.cpp and must be unpermuted (``permuted_qk``); Qwen2's are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmesh_inference.importing.errors import ModelImportError


@dataclass(frozen=True)
class Architecture:
    model_type: str
    permuted_qk: bool


ARCHITECTURES = {
    "llama": Architecture("llama", permuted_qk=True),
    "mistral": Architecture("llama", permuted_qk=True),
    "qwen2": Architecture("qwen2", permuted_qk=False),
}


def architecture(name: str) -> Architecture:
    found = ARCHITECTURES.get(name)
    if found is None:
        raise ModelImportError(
            f"GGUF architecture {name!r} is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return found


def gguf_config(meta: dict[str, Any], *, tied: bool, vocab_size: int) -> dict[str, Any]:
    """The ``config.json`` of the model described by the GGUF metadata ``meta``."""
    arch_name = str(meta["general.architecture"])
    arch = architecture(arch_name)

    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch_name}.{name}", default)
        if value is None:
            raise ModelImportError(f"the GGUF metadata lacks {arch_name}.{name}")
        return value

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    config: dict[str, Any] = {
        "model_type": arch.model_type,
        "architectures": ["Qwen2ForCausalLM" if arch.model_type == "qwen2" else "LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(key("context_length", 2048)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": arch.model_type == "qwen2",
        "mlp_bias": False,
    }
    scaling = meta.get(f"{arch_name}.rope.scaling.type")
    if scaling == "linear":
        config["rope_scaling"] = {
            "type": "linear",
            "factor": float(key("rope.scaling.factor")),
        }
    elif scaling not in (None, "none"):
        raise ModelImportError(f"RoPE scaling {scaling!r} is not supported by the importer")
    for name in ("bos_token_id", "eos_token_id"):
        value = meta.get(f"tokenizer.ggml.{name}")
        if value is not None:
            config[name] = int(value)
    return config
