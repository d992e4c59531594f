"""``tokenizer.json`` from a GGUF file's vocabulary, built with the ``tokenizers`` library.

Two GGUF tokenizer models are supported:

- ``gpt2``: byte-level BPE (SmolLM, Qwen2, Llama 3). The merges come from the file;
  the pre-tokenizer follows llama.cpp's rule named by ``tokenizer.ggml.pre``.
- ``llama``: SentencePiece BPE with byte fallback (Llama 2, Mistral). The merges are
  rebuilt from the scores, as Hugging Face's converter does.

Special tokens (GGUF token type 3 = control, 4 = user-defined) are added as special
added tokens so chat markers such as ``<|im_start|>`` stay single tokens.
"""

from __future__ import annotations

from typing import Any

from llmesh_inference.importing.errors import ModelImportError

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), as Hugging Face writes them.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CONTROL, USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("smollm",):  # digits one by one, then GPT-2's regex
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    regex = {"gpt2": _GPT2, "default": _GPT2, "llama-bpe": _LLAMA3, "llama3": _LLAMA3}.get(pre)
    if pre.startswith("qwen2"):
        regex = _QWEN2
    if regex is None:
        raise ModelImportError(
            f"the GGUF pre-tokenizer {pre!r} is not supported "
            "(supported: smollm, gpt2, default, llama-bpe, qwen2)"
        )
    split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
    return pre_tokenizers.Sequence([split, byte_level])


def _special_tokens(tokens: list[str], types: list[int]) -> list[tuple[int, str]]:
    return [(i, t) for i, t in enumerate(tokens) if types and types[i] in (CONTROL, USER_DEFINED)]


def _bpe_gpt2(tokens: list[str], merges: list[str], pre: str) -> Any:
    from tokenizers import Tokenizer, decoders, models

    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [(left, right) for left, _, right in (m.partition(" ") for m in merges)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges: every split of a piece into two pieces, best score first."""
    vocab = {token: i for i, token in enumerate(tokens)}
    found: list[tuple[float, int, int, str, str]] = []
    for token, index in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                found.append((-scores[index], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def _bpe_llama(tokens: list[str], scores: list[float]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {token: i for i, token in enumerate(tokens)}
    unk = "<unk>" if "<unk>" in vocab else None
    model = models.BPE(
        vocab=vocab,
        merges=_spm_merges(tokens, scores),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return tokenizer


def build_tokenizer(metadata: dict[str, Any]) -> str:
    """The ``tokenizer.json`` text for the GGUF ``tokenizer.ggml.*`` metadata."""
    from tokenizers import AddedToken

    kind = metadata.get("tokenizer.ggml.model")
    tokens = list(metadata.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise ModelImportError("the GGUF file has no tokenizer.ggml.tokens vocabulary")
    types = [int(t) for t in metadata.get("tokenizer.ggml.token_type") or []]
    if kind == "gpt2":
        merges = list(metadata.get("tokenizer.ggml.merges") or [])
        if not merges:
            raise ModelImportError("a gpt2 (BPE) GGUF tokenizer needs tokenizer.ggml.merges")
        tokenizer = _bpe_gpt2(tokens, merges, str(metadata.get("tokenizer.ggml.pre") or "default"))
    elif kind == "llama":
        scores = [float(s) for s in metadata.get("tokenizer.ggml.scores") or []]
        if len(scores) != len(tokens):
            raise ModelImportError("a llama (SentencePiece) GGUF tokenizer needs its scores")
        tokenizer = _bpe_llama(tokens, scores)
    else:
        raise ModelImportError(
            f"the GGUF tokenizer model {kind!r} is not supported (supported: gpt2, llama)"
        )
    special = [
        AddedToken(token, special=True, normalized=False)
        for _, token in _special_tokens(tokens, types)
    ]
    tokenizer.add_special_tokens(special)
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    if add_bos(metadata) and bos_id is not None:
        from tokenizers import processors

        bos = tokens[int(bos_id)]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, int(bos_id))]
        )
    return str(tokenizer.to_str())


def add_bos(metadata: dict[str, Any]) -> bool:
    """Whether prompts start with BOS (GGUF default: yes for SentencePiece, no for BPE)."""
    value = metadata.get("tokenizer.ggml.add_bos_token")
    if value is None:
        return metadata.get("tokenizer.ggml.model") == "llama"
    return bool(value)
