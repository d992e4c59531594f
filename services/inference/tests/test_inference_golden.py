"""Golden correctness of the imported SmolLM2-135M-Instruct against llama.cpp.

``<repo>/../shared/golden/smollm2-135m-llamacpp.json`` holds llama.cpp's prompt text and
ids for six chats (after the GGUF's chat template), its 48 greedy tokens and at each
step its 5 most likely tokens with log-probabilities, plus plain texts with their ids.

- Tokenizer and chat template: our prompt ids equal llama.cpp's exactly.
- Teacher forcing along llama.cpp's greedy path: llama.cpp's token is within our top
  ``MAX_RANK + 1`` at every step and the log-probabilities of its likely tokens are close.
  Exact greedy ids are the wrong check: llama.cpp quantizes activations for its Q4_1
  dot products, so near-ties flip (France, step 1: p("L") 0.157 vs p("The") 0.123 in
  llama.cpp; 0.140 vs 0.152 in the exact float64 pass and in ours).
- An exact float64 NumPy forward pass of the dequantized GGUF (tests/numpy_llama.py, in
  llama.cpp's own layout) is the tight reference: MLX's float32 logits match it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmesh_inference.blas import find_openblas_preload
from llmesh_inference.importing import default_gguf

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT.parent / "shared" / "golden" / "smollm2-135m-llamacpp.json"
MODEL = "smollm2-135m-instruct"
HERE = Path(__file__).resolve().parent

# Tolerances (measured maxima over the 6 chats x 48 steps in the comments).
MAX_RANK = 3  # llama.cpp's greedy token among our top 4 (measured: worst rank 3, once)
MAX_PROB_GAP = 0.15  # |p ours - p llama.cpp| of each of its top-5 tokens, measured 0.117
LIKELY = np.log(0.05)  # log-prob gaps are compared for llama.cpp's tokens above 5 %:
MEAN_LOGPROB_GAP = 0.12  # measured mean 0.07 over 776 tokens,
P95_LOGPROB_GAP = 0.3  # 95th percentile 0.196,
MAX_LOGPROB_GAP = 1.5  # max 1.19 (France step 10, "," 8.5 % vs our 2.6 %, off our path)
REFERENCE_ATOL = 1e-3  # |MLX float32 - NumPy float64| logits, measured 7.8e-5 (|logit| <= 29)


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    if not GOLDEN.is_file():
        pytest.fail(f"golden data missing: {GOLDEN} (the shared folder beside the clone holds it)")
    data: dict[str, Any] = json.loads(GOLDEN.read_text())
    return data


@pytest.fixture(scope="module")
def tokenizer(smollm2_model_dir: Path) -> Any:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    return load_tokenizer(smollm2_model_dir / MODEL)


@pytest.fixture(scope="module")
def forced(smollm2_model_dir: Path, golden: dict[str, Any], tmp_path_factory: Any) -> Any:
    """golden_mlx.py's output, run in a child with the optimized OpenBLAS preloaded."""
    out = tmp_path_factory.mktemp("golden") / "forced.json"
    preload = find_openblas_preload()
    env = preload.apply(os.environ) if preload else dict(os.environ)
    subprocess.run(
        [sys.executable, str(HERE / "golden_mlx.py"), str(smollm2_model_dir / MODEL),
         str(GOLDEN), str(out)],
        env=env, check=True, timeout=240,
    )  # fmt: skip
    return json.loads(out.read_text())


def test_chat_template_and_tokenizer_reproduce_llama_cpp_prompts(
    tokenizer: Any, golden: dict[str, Any]
) -> None:
    assert len(golden["chats"]) == 6
    for chat in golden["chats"]:
        text = tokenizer.apply_chat_template(
            chat["messages"], add_generation_prompt=True, tokenize=False
        )
        assert text == chat["prompt_text"]
        ids = tokenizer.apply_chat_template(chat["messages"], add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        assert list(ids) == chat["prompt_ids"], chat["messages"]
    for item in golden["tokenize"]:
        assert tokenizer.encode(item["text"], add_special_tokens=False) == item["ids"]
        assert tokenizer.decode(item["ids"]) == item["text"]  # round trip


def test_teacher_forcing_follows_llama_cpp(golden: dict[str, Any], forced: Any) -> None:
    ranks: list[int] = []
    gaps: list[float] = []
    for chat, ours in zip(golden["chats"], forced["chats"], strict=True):
        steps = zip(chat["top5_per_step"], ours["steps"], strict=True)
        for step, (top, mine) in enumerate(steps):
            where = (chat["messages"][-1]["content"], step)
            ranks.append(mine["rank"])
            assert mine["rank"] <= MAX_RANK, (where, mine)
            for entry, our_logprob in zip(top, mine["ours"], strict=True):
                prob_gap = abs(np.exp(our_logprob) - np.exp(entry["logprob"]))
                assert prob_gap <= MAX_PROB_GAP, (where, entry, our_logprob)
                if entry["logprob"] >= LIKELY:
                    gaps.append(abs(our_logprob - entry["logprob"]))
    print(
        f"steps {len(ranks)}, worst rank {max(ranks)}, rank>0 at {sum(r > 0 for r in ranks)}; "
        f"log-prob gap over {len(gaps)} likely tokens: mean {np.mean(gaps):.3f}, "
        f"p95 {np.percentile(gaps, 95):.3f}, max {max(gaps):.3f}"
    )
    assert len(ranks) == 6 * 48
    assert float(np.mean(gaps)) <= MEAN_LOGPROB_GAP
    assert float(np.percentile(gaps, 95)) <= P95_LOGPROB_GAP
    assert max(gaps) <= MAX_LOGPROB_GAP


def test_mlx_logits_match_an_exact_float64_forward_pass(
    golden: dict[str, Any], forced: Any
) -> None:
    sys.path.insert(0, str(HERE))
    try:
        from numpy_llama import NumpyLlama
    finally:
        sys.path.remove(str(HERE))
    chat = golden["chats"][0]
    ours = np.array(forced["reference_logits"])
    steps = len(ours)
    ids = chat["prompt_ids"] + chat["greedy_ids"][: steps - 1]
    first = len(chat["prompt_ids"]) - 1
    reference = NumpyLlama(default_gguf()).logits(ids, list(range(first, first + steps)))
    deviation = float(np.abs(ours - reference).max())
    print(f"max |logit MLX float32 - NumPy float64| over {steps} steps: {deviation:.2e}")
    assert deviation <= REFERENCE_ATOL
    # The France near-tie: the exact pass prefers "The" (504) to llama.cpp's "L" (60).
    first_step = reference[0] - np.logaddexp.reduce(reference[0])
    assert np.exp(first_step[504]) > np.exp(first_step[60])
