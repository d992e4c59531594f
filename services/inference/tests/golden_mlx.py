"""Teacher forcing of an imported model along llama.cpp's greedy paths (run as a script).

``python golden_mlx.py MODEL_DIR GOLDEN_JSON OUT_JSON`` runs each golden chat's prompt
plus llama.cpp's greedy tokens through the model in one MLX forward pass and writes,
per chat and step: our log-probabilities of llama.cpp's top-5 tokens and the rank of
its greedy token among ours (EOS left out: llama.cpp generated with EOS ignored), plus
the float32 logits of the first chat at its last prompt position and the next
``REFERENCE_STEPS - 1`` positions, for the float64 reference test. The
test starts it in a child process with the optimized OpenBLAS preloaded (prefill is
~20 times faster than with the reference BLAS the mlx-cpu wheel links).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REFERENCE_STEPS = 4


def main(model_dir: str, golden_path: str, out_path: str) -> None:
    import mlx.core as mx
    import numpy as np
    from mlx_lm.utils import load_model

    loaded: Any = load_model(Path(model_dir))  # no tokenizer: transformers is slow to import
    model, config = loaded[0], loaded[1]
    eos = [int(config["eos_token_id"]), 0]  # <|im_end|> and <|endoftext|>
    golden = json.loads(Path(golden_path).read_text())
    chats = []
    reference: list[list[float]] = []
    for chat in golden["chats"]:
        prompt = chat["prompt_ids"]
        ids = prompt + chat["greedy_ids"][:-1]
        logits = model(mx.array([ids]))[0].astype(mx.float32)
        logprobs = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        steps = []
        for step, (token, top) in enumerate(
            zip(chat["greedy_ids"], chat["top5_per_step"], strict=True)
        ):
            row = logprobs[len(prompt) - 1 + step].copy()
            row[eos] = -np.inf
            steps.append(
                {
                    "rank": int((row > row[token]).sum()),
                    "ours": [float(logprobs[len(prompt) - 1 + step][e["id"]]) for e in top],
                }
            )
        chats.append({"steps": steps})
        if not reference:
            first = len(prompt) - 1
            reference = np.array(logits[first : first + REFERENCE_STEPS]).tolist()
    Path(out_path).write_text(json.dumps({"chats": chats, "reference_logits": reference}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
