"""The import's last step: load the new folder with mlx-lm and generate greedily."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SMOKE_QUESTION = "What is the capital of France?"


def smoke_prompt(tokenizer: Any) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": SMOKE_QUESTION}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return [int(i) for i in (ids["input_ids"] if isinstance(ids, dict) else ids)]
    return [int(i) for i in tokenizer.encode(SMOKE_QUESTION)]


def smoke_check(folder: Path, max_tokens: int = 12) -> str:
    """Greedy ``max_tokens`` reply to a fixed question (raises if the folder does not load)."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.utils import load

    loaded: Any = load(str(folder))
    model, tokenizer = loaded[0], loaded[1]
    prompt = mx.array(smoke_prompt(tokenizer))
    pieces = [
        step.text for step in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens)
    ]
    return "".join(pieces)
