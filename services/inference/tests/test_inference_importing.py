"""``llmesh models import``: GGUF files and Hugging Face folders → mlx-lm folders.

The tiny test model is exported to GGUF here (with llama.cpp's Q/K row permutation
and Q4_1/Q8_0 tensors, through the ``gguf`` package's writer) and imported back:
its logits must match the original's within the quantization error. SmolLM2 (the
session fixture) is checked against its GGUF metadata; golden checks against
llama.cpp are in test_inference_golden.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmesh_inference.importing import ModelImportError, import_model, read_record
from llmesh_inference.importing.affine import to_affine
from llmesh_inference.importing.gguf_file import unpermute_rows

TINY = "tiny-llama-test"


def _permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py permutation of Q/K rows (what import undoes)."""
    return (
        rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _tiny_to_gguf(
    folder: Path, out: Path, *, quant: str = "Q4_1", odd_type: str | None = None
) -> Path:
    """Write the tiny mlx-lm folder as a llama.cpp-style GGUF file."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    vocab = tokenizer["model"]["vocab"] | {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges([" ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(vocab["<|bos|>"])
    writer.add_eos_token_id(vocab["<|end|>"])
    writer.add_add_bos_token(False)
    template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    writer.add_chat_template(template)
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    parts = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for name, original in weights.items():
        value = original
        base = name.removesuffix(".weight")
        if base in names:
            target = names[base]
        else:
            layer, part = base.removeprefix("model.layers.").split(".", 1)
            target = f"blk.{layer}.{parts[part]}"
        if part_is(target, "attn_q"):
            value = _permute(value, config["num_attention_heads"])
        elif part_is(target, "attn_k"):
            value = _permute(value, config["num_key_value_heads"])
        kind = "F32" if value.ndim == 1 else ("Q8_0" if target == "token_embd" else quant)
        if odd_type and target == "blk.0.ffn_up":
            kind = odd_type
        if kind == "F32":
            writer.add_tensor(f"{target}.weight", value)
            continue
        qtype = gguf.GGMLQuantizationType[kind]
        if kind in ("Q4_0", "Q4_1", "Q8_0"):
            data = gguf.quants.quantize(value, qtype)
        else:  # a type the importer must refuse: bytes of the right size are enough
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            data = np.zeros((value.shape[0], value.shape[1] // block * size), dtype=np.uint8)
        writer.add_tensor(f"{target}.weight", data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def part_is(target: str, part: str) -> bool:
    return target.endswith(f".{part}")


def _logits(folder: Path, ids: list[int]) -> np.ndarray:
    import mlx.core as mx
    from mlx_lm.utils import load

    model = load(str(folder))[0]
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    rows = np.arange(12 * 3 * 5, dtype=np.float32).reshape(36, 5)  # 3 heads of 12
    assert np.array_equal(unpermute_rows(_permute(rows, 3), 3), rows)
    assert not np.array_equal(_permute(rows, 3), rows)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_affine_form_dequantizes_exactly_like_gguf(kind: str) -> None:
    import gguf
    import mlx.core as mx

    rng = np.random.default_rng(1)
    values = rng.standard_normal((8, 96)).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    raw = gguf.quants.quantize(values, qtype)
    weight, scales, biases = to_affine(raw, kind, 8, 96)
    bits = 8 if kind == "Q8_0" else 4
    ours = mx.dequantize(
        mx.array(weight),
        mx.array(scales.astype(np.float32)),
        mx.array(biases.astype(np.float32)),
        group_size=32,
        bits=bits,
    )
    assert np.array_equal(np.array(ours), gguf.quants.dequantize(raw, qtype))


@pytest.mark.parametrize(("dtype", "quant"), [("float32", "Q8_0"), ("quantized", "Q4_1")])
def test_gguf_import_reproduces_the_model(
    tiny_model_dir: Path, tmp_path: Path, dtype: str, quant: str
) -> None:
    gguf_path = _tiny_to_gguf(tiny_model_dir / TINY, tmp_path / "tiny.gguf", quant=quant)
    result = import_model(gguf_path, tmp_path / "models", name="tiny-gguf", dtype=dtype)
    assert result.smoke_text is not None  # the import ends with a short greedy generation
    record = read_record(result.path)
    assert record["source_format"] == "gguf" and record["architecture"] == "llama"
    assert record["dtype"] == dtype
    assert record["source_types"] == {"F32": 5, "Q8_0": 1, quant: 15} | (
        {"Q8_0": 16} if quant == "Q8_0" else {}
    )
    original = json.loads((tiny_model_dir / TINY / "config.json").read_text())
    config = json.loads((result.path / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "vocab_size"):
        assert config[key] == original[key]
    assert config["tie_word_embeddings"] is False
    assert ("quantization" in config) == (dtype == "quantized")
    # Tokenizer rebuilt from the GGUF vocabulary and merges: same ids as the original.
    from tokenizers import Tokenizer

    text = "The mesh routes 42 requests, quickly! <|end|>"
    ours = Tokenizer.from_file(str(result.path / "tokenizer.json")).encode(text).ids
    assert (
        ours == Tokenizer.from_file(str(tiny_model_dir / TINY / "tokenizer.json")).encode(text).ids
    )
    # Logits within the quantization error of the original float weights. Measured: Q8_0
    # 0.0064 of the largest logit (0.097 with the Q/K rows left permuted), Q4_1 0.039.
    ids = ours[:12]
    want, got = _logits(tiny_model_dir / TINY, ids), _logits(result.path, ids)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < (0.01 if quant == "Q8_0" else 0.06), error


def test_hf_folder_import(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = import_model(tiny_model_dir / TINY, tmp_path / "models", dtype="float16")
    assert result.path.name == TINY
    record = read_record(result.path)
    assert record["source_format"] == "huggingface" and record["dtype"] == "float16"
    assert record["parameters"] == sum(
        int(np.prod(s)) for s in _shapes(tiny_model_dir / TINY).values()
    )
    assert (result.path / "tokenizer_config.json").read_text() == (
        tiny_model_dir / TINY / "tokenizer_config.json"
    ).read_text()
    ids = [5, 17, 99, 240, 31]
    want, got = _logits(tiny_model_dir / TINY, ids), _logits(result.path, ids)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def _shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors.numpy import load_file

    return {k: v.shape for k, v in load_file(str(folder / "model.safetensors")).items()}


def test_unsupported_tensor_type_is_refused_by_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    gguf_path = _tiny_to_gguf(tiny_model_dir / TINY, tmp_path / "odd.gguf", odd_type="IQ2_XXS")
    with pytest.raises(ModelImportError, match=r"blk\.0\.ffn_up\.weight is stored as IQ2_XXS"):
        import_model(gguf_path, tmp_path / "models")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_cli_import_and_list(tiny_model_dir: Path, tmp_path: Path) -> None:
    gguf_path = _tiny_to_gguf(tiny_model_dir / TINY, tmp_path / "tiny.Q4_1.gguf")
    models = tmp_path / "models"
    cli = [sys.executable, "-m", "llmesh_cli.main", "models"]
    done = subprocess.run(
        [*cli, "import", str(gguf_path), "--models-dir", str(models), "--name", "t"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "smoke check" in done.stdout and "imported" in done.stdout
    listed = subprocess.run(
        [*cli, "list", "--models-dir", str(models), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (row,) = json.loads(listed.stdout)["models"]
    assert row["name"] == "t" and row["source"].endswith("tiny.Q4_1.gguf")
    assert row["architecture"] == "llama" and row["dtype_on_disk"] == "float32"
    again = subprocess.run(
        [*cli, "import", str(gguf_path), "--models-dir", str(models), "--name", "t"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 2 and "exists" in again.stderr
    missing = subprocess.run(
        [*cli, "import", str(tmp_path / "nope.gguf"), "--models-dir", str(models)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_smollm2_import_record(smollm2_model_dir: Path) -> None:
    folder = smollm2_model_dir / "smollm2-135m-instruct"
    record = read_record(folder)
    assert record["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert record["source_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert record["parameters"] == 134_515_008 and record["context_length"] == 8192
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["num_key_value_heads"] == 3
    assert config["rope_theta"] == 100000.0 and config["vocab_size"] == 49152
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["add_bos_token"] is False
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in tokenizer_config["chat_template"]
