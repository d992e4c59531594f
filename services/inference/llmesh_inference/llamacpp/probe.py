"""How fast llama.cpp decodes here: a short greedy generation on a throwaway child.

Used by ``llmesh doctor``; the benchmark (bench/bench_llamacpp.py) measures properly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from llmesh_inference.llamacpp.child import ChildOptions, LlamaServerChild
from llmesh_inference.llamacpp.http import open_request, server_sent_events


async def stream_completion(
    address: tuple[str, int], payload: dict[str, Any]
) -> tuple[float, float, int]:
    """Stream one ``/completion``; returns (seconds to first token, total seconds, tokens)."""
    started = time.perf_counter()
    first, tokens = 0.0, 0
    response = await open_request(*address, "POST", "/completion", payload)
    try:
        async for event in server_sent_events(response):
            n = len(event.get("tokens") or [])
            if n and not first:
                first = time.perf_counter() - started
            tokens += n
            if event.get("stop"):
                break
    finally:
        await response.close()
    return first, time.perf_counter() - started, tokens


async def measure_decode(
    binary: Path, gguf: Path, *, threads: int, tokens: int = 64, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Single-stream greedy decode tok/s of ``gguf`` on a llama-server started for it."""
    child = LlamaServerChild(
        ChildOptions(binary, gguf, "probe", threads=threads, parallel=1, ctx_size=1024),
        start_timeout_s=timeout_s,
    )
    runner = asyncio.create_task(child.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not child.ready:
                if runner.done():
                    runner.result()  # raises the child's error
                await asyncio.sleep(0.05)
            payload = {
                "prompt": "The history of the city begins",
                "n_predict": tokens,
                "temperature": 0.0,
                "stream": True,
                "return_tokens": True,
                "ignore_eos": True,
                "cache_prompt": False,
            }
            first, total, n = await stream_completion(child.address, payload)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner
    decode_s = max(total - first, 1e-9)
    return {
        "threads": threads,
        "tokens": n,
        "ttft_s": round(first, 3),
        "decode_tok_s": round((n - 1) / decode_s, 1) if n > 1 else 0.0,
    }
