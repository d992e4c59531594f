"""Deterministic small Llama-architecture models in mlx-lm folder format.

``init_tiny(path, size="test")`` writes ``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
``generation_config.json``. The byte-level BPE tokenizer is trained locally with
the ``tokenizers`` package on built-in text, and the weights come from a seeded
NumPy generator, so the same call always writes the same files and nothing is
downloaded. The weights are random: the text is gibberish, but every code path
(prefill, batched decode, sampling, chat templates, stop sequences) is real.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

TinySize = Literal["test", "small", "bench"]
SIZES: tuple[TinySize, ...] = ("test", "small", "bench")

BOS = "<|bos|>"
EOS = "<|eos|>"
END = "<|end|>"
PAD = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, END, *ROLE_TOKENS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = """\
The mesh routes every request to a worker that has the model loaded.
A worker streams tokens as soon as they are decoded, and stops the moment its client goes away.
Requests share decode steps: new ones join the batch between steps and finished ones leave it.
Memory keeps the conversation, and recall finds what was said before by meaning and by keyword.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
Rivers carry water from the mountains to the sea; clouds carry it back again as rain.
Numbers such as 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 appear in text too, and so does punctuation!
Hello, world. How are you today? I am fine, thank you. What would you like to talk about?
Operators read logs, metrics and traces; they want clear errors and predictable latency.
"""

_SYLLABLES = (
    "ka",
    "ri",
    "to",
    "ne",
    "mu",
    "sa",
    "lo",
    "vi",
    "de",
    "pa",
    "qu",
    "el",
    "an",
    "or",
    "is",
    "un",
    "ter",
    "mon",
    "gal",
    "bri",
    "sto",
    "phe",
    "ach",
    "ing",
    "tion",
    "ver",
    "pre",
    "con",
    "dis",
    "ble",
    "ful",
    "ness",
    "ment",
    "ous",
    "ive",
    "ary",
    "ist",
    "ism",
    "ize",
    "ward",
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of one tiny model size."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int
    corpus_words: int


SPECS: dict[TinySize, TinySpec] = {
    # Fast on 2 CPU cores: ~0.1M parameters, 1024-token context.
    "test": TinySpec(512, 64, 2, 4, 2, 128, 1024, 4_000),
    # ~6M parameters.
    "small": TinySpec(2048, 256, 4, 8, 4, 768, 2048, 40_000),
    # ~30M parameters: the benchmark model.
    "bench": TinySpec(8192, 512, 8, 8, 4, 1536, 2048, 200_000),
}

DEFAULT_NAMES: dict[TinySize, str] = {
    "test": "tiny-llama-test",
    "small": "tiny-llama-small",
    "bench": "tiny-llama-bench",
}


def _corpus(words: int) -> list[str]:
    """Built-in text plus deterministic pseudo-words, enough to learn ``vocab`` merges."""
    rng = np.random.default_rng(1234)
    lines = _CORPUS.splitlines()
    out = list(lines) * 20
    line: list[str] = []
    for _ in range(words):
        count = int(rng.integers(1, 4))
        picks = rng.integers(0, len(_SYLLABLES), size=count)
        line.append("".join(_SYLLABLES[int(i)] for i in picks))
        if len(line) >= 12:
            out.append(" ".join(line) + ".")
            line = []
    if line:
        out.append(" ".join(line))
    return out


def train_tokenizer(vocab_size: int, corpus_words: int) -> str:
    """Train a byte-level BPE tokenizer; returns its ``tokenizer.json`` text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(corpus_words), trainer=trainer)
    return tokenizer.to_str()


def _model_args(spec: TinySpec, vocab_size: int) -> dict[str, object]:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "intermediate_size": spec.intermediate_size,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def _weight_shapes(spec: TinySpec, vocab: int) -> dict[str, tuple[int, ...]]:
    head_dim = spec.hidden_size // spec.num_attention_heads
    kv = spec.num_key_value_heads * head_dim
    h, inter = spec.hidden_size, spec.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (vocab, h),
    }
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        }
    return shapes


def _weights(
    spec: TinySpec, vocab: int, seed: int, special_ids: list[int]
) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for name, shape in _weight_shapes(spec, vocab).items():
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shape, dtype=np.float32)
            continue
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        std = 1.0 if name == "model.embed_tokens.weight" else 1.0 / np.sqrt(shape[-1])
        if name == "lm_head.weight":
            # A sharper output distribution than a fresh init, so that sampling
            # has a real distribution to pick from (not a near-uniform one).
            std *= 4.0
        weights[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    # Residual dimension 0 is a constant "bias" feature: every embedding sets it,
    # no layer writes to it, so the final norm keeps it positive. The output rows
    # of the special tokens read only it, with a large negative weight: a random
    # model never samples end-of-sequence, and generations run to max_tokens.
    weights["model.embed_tokens.weight"][:, 0] = 2.0
    for i in range(spec.num_hidden_layers):
        weights[f"model.layers.{i}.self_attn.o_proj.weight"][0, :] = 0.0
        weights[f"model.layers.{i}.mlp.down_proj.weight"][0, :] = 0.0
    head = weights["lm_head.weight"]
    head[:, 0] = 0.0
    head[special_ids, :] = 0.0
    head[special_ids, 0] = -100.0
    return weights


def parameter_count(size: TinySize) -> int:
    """Number of parameters the model of ``size`` has (tokenizer vocab included)."""
    spec = SPECS[size]
    return sum(int(np.prod(s)) for s in _weight_shapes(spec, spec.vocab_size).values())


def init_tiny(path: Path | str, *, size: TinySize = "test", seed: int = 0) -> Path:
    """Write a deterministic tiny Llama model folder at ``path``; returns the path.

    Existing files in ``path`` are overwritten. The same ``size`` and ``seed``
    always give byte-identical files.
    """
    from safetensors.numpy import save_file

    if size not in SPECS:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    spec = SPECS[size]
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer_json = train_tokenizer(spec.vocab_size, spec.corpus_words)
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    added = json.loads(tokenizer_json)["added_tokens"]
    vocab_size = max([*vocab.values(), *(t["id"] for t in added)]) + 1
    ids = {t["content"]: t["id"] for t in added}

    config = _model_args(spec, vocab_size) | {
        "bos_token_id": ids[BOS],
        "eos_token_id": [ids[EOS], ids[END]],
        "pad_token_id": ids[PAD],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "tokenizer.json").write_text(tokenizer_json)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": END,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.max_position_embeddings,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": END, "pad_token": PAD}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    generation = {"bos_token_id": ids[BOS], "eos_token_id": [ids[EOS], ids[END]]}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_file(
        _weights(spec, vocab_size, seed, sorted(ids.values())),
        str(folder / "model.safetensors"),
        metadata={"format": "mlx"},
    )
    return folder
