"""In-process tests of the GGUF -> tokenizer.json builder's branches (importing/tokenizer.py).

Small hand-made vocabularies, no model files: each test encodes or decodes text with the
built tokenizer and checks what a wrong rule would get wrong.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmesh_inference.importing.errors import ModelImportError
from llmesh_inference.importing.tokenizer import (
    _pre_tokenizer,
    _special_tokens,
    _spm_merges,
    add_bos,
    build_tokenizer,
)

# GPT-2 byte-level alphabet for the characters used here ("Ġ" is the byte-level space).
_BYTES = [*"abcdefghijklmnopqrstuvwxyz0123456789", "Ġ", "'", "!", "Ċ"]


def _gpt2_meta(pre: str | None, **extra: Any) -> dict[str, Any]:
    tokens = [*_BYTES, "ab", "Ġa", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 2) + [3, 4]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": ["a b", "Ġ a"],
    }
    if pre is not None:
        meta["tokenizer.ggml.pre"] = pre
    meta.update(extra)
    return meta


def _load(text: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def _pieces(tokenizer: Any, text: str) -> list[str]:
    return list(tokenizer.encode(text).tokens)


def test_gpt2_merges_special_tokens_and_default_pre() -> None:
    tok = _load(build_tokenizer(_gpt2_meta(None)))
    assert _pieces(tok, "ab a") == ["ab", "Ġa"]
    # control (3) and user-defined (4) tokens stay single tokens
    assert _pieces(tok, "<|im_start|>ab<|im_end|>") == ["<|im_start|>", "ab", "<|im_end|>"]
    assert tok.decode(tok.encode("ab a").ids) == "ab a"
    # BPE: no BOS by default
    assert tok.encode("ab").ids == [tok.token_to_id("ab")]


def test_gpt2_without_types_has_no_special_tokens() -> None:
    meta = _gpt2_meta("gpt2")
    del meta["tokenizer.ggml.token_type"]
    tok = _load(build_tokenizer(meta))
    assert "<|im_start|>" not in _pieces(tok, "<|im_start|>")


def test_smollm_splits_digits_one_by_one() -> None:
    smollm = _load(build_tokenizer(_gpt2_meta("smollm")))
    gpt2 = _load(build_tokenizer(_gpt2_meta("gpt2")))
    pre_s = smollm.pre_tokenizer.pre_tokenize_str("123")
    pre_g = gpt2.pre_tokenizer.pre_tokenize_str("123")
    assert [p for p, _ in pre_s] == ["1", "2", "3"]
    assert [p for p, _ in pre_g] == ["123"]


def test_llama3_groups_digits_by_three() -> None:
    for pre in ("llama-bpe", "llama3"):
        split = [p for p, _ in _pre_tokenizer(pre).pre_tokenize_str("12345")]
        assert split == ["123", "45"], pre


def test_qwen2_family_splits_single_digits() -> None:
    for pre in ("qwen2", "qwen2.5"):
        split = [p for p, _ in _pre_tokenizer(pre).pre_tokenize_str("123")]
        assert split == ["1", "2", "3"], pre


def test_unknown_pre_tokenizer_is_refused_with_the_supported_list() -> None:
    with pytest.raises(ModelImportError, match=r"'tekken'.*supported: smollm"):
        build_tokenizer(_gpt2_meta("tekken"))


def test_gpt2_without_merges_is_refused() -> None:
    meta = _gpt2_meta("gpt2")
    meta["tokenizer.ggml.merges"] = []
    with pytest.raises(ModelImportError, match=r"tokenizer\.ggml\.merges"):
        build_tokenizer(meta)


def test_no_vocabulary_is_refused() -> None:
    with pytest.raises(ModelImportError, match=r"no tokenizer\.ggml\.tokens"):
        build_tokenizer({"tokenizer.ggml.model": "gpt2"})


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ModelImportError, match=r"'rwkv'.*supported: gpt2, llama"):
        build_tokenizer({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})


def _llama_meta(**extra: Any) -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "hi", "▁hi", "<0x21>"]
    scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -0.5, 0.0]
    types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
    }
    meta.update(extra)
    return meta


def test_llama_prepends_bos_and_merges_by_score() -> None:
    tok = _load(build_tokenizer(_llama_meta()))
    encoding = tok.encode("hi")
    assert encoding.tokens == ["<s>", "▁hi"]
    assert tok.decode(encoding.ids, skip_special_tokens=True) == "hi"


def test_llama_without_bos_when_metadata_says_so() -> None:
    tok = _load(build_tokenizer(_llama_meta(**{"tokenizer.ggml.add_bos_token": False})))
    assert tok.encode("hi").tokens == ["▁hi"]


def test_llama_byte_fallback_for_unknown_characters() -> None:
    tok = _load(build_tokenizer(_llama_meta(**{"tokenizer.ggml.add_bos_token": False})))
    encoding = tok.encode("hi!")
    assert encoding.tokens == ["▁hi", "<0x21>"]
    assert tok.decode(encoding.ids) == "hi!"


def test_llama_without_unk_token_still_builds() -> None:
    meta = _llama_meta(**{"tokenizer.ggml.add_bos_token": False})
    meta["tokenizer.ggml.tokens"] = ["<pad>", *meta["tokenizer.ggml.tokens"][1:]]
    text = build_tokenizer(meta)
    import json

    assert json.loads(text)["model"]["unk_token"] is None


def test_llama_needs_one_score_per_token() -> None:
    meta = _llama_meta()
    meta["tokenizer.ggml.scores"] = [0.0]
    with pytest.raises(ModelImportError, match="needs its scores"):
        build_tokenizer(meta)


def test_spm_merges_are_ordered_best_score_first() -> None:
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0]
    merges = _spm_merges(tokens, scores)
    assert merges[0] == ("b", "c")
    assert merges[1] == ("a", "b")
    # "abc" has two splits with the same score: ordered by the left piece's id
    assert merges[2:] == [("a", "bc"), ("ab", "c")]


def test_special_tokens_are_control_and_user_defined_only() -> None:
    tokens = ["n", "u", "c", "d", "b"]
    assert _special_tokens(tokens, [1, 2, 3, 4, 6]) == [(2, "c"), (3, "d")]
    assert _special_tokens(tokens, []) == []


def test_add_bos_defaults_and_explicit_values() -> None:
    assert add_bos({"tokenizer.ggml.model": "llama"}) is True
    assert add_bos({"tokenizer.ggml.model": "gpt2"}) is False
    assert add_bos({"tokenizer.ggml.model": "llama", "tokenizer.ggml.add_bos_token": 0}) is False
    assert add_bos({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.add_bos_token": True}) is True


def test_gpt2_with_bos_requested_gets_a_template() -> None:
    tok = _load(
        build_tokenizer(
            _gpt2_meta(
                "gpt2",
                **{"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": 42},
            )
        )
    )
    assert tok.encode("ab").tokens == ["<|im_start|>", "ab"]
