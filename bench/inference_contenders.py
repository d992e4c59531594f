"""The contenders of the inference benchmark (``bench.bench_inference``) besides our
worker: in-process ``mlx_lm.stream_generate`` in a child process (``Baseline``) and the
pip package's own ``mlx_lm.server``, each on the chosen BLAS (``blas_env``).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BLAS_THREADS: list[int | None] = [None]


def blas_env(mode: str) -> dict[str, str]:
    """Environment for a child process on the given BLAS (and OpenBLAS thread count)."""
    from llmesh_inference.blas import REEXEC_MARKER, find_openblas_preload

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMESH_")}
    env.pop("LD_PRELOAD", None)
    if mode == "openblas":
        preload = find_openblas_preload()
        if preload is None:
            raise SystemExit("no optimized OpenBLAS found")
        env = preload.apply(env)
        if BLAS_THREADS[0] is not None:
            env["OPENBLAS_NUM_THREADS"] = str(BLAS_THREADS[0])
        return env
    env[REEXEC_MARKER] = "1"  # do not re-execute: stay on the reference BLAS
    env["LLMESH_INFERENCE_BLAS_PRELOAD"] = "0"
    return env


def free_port() -> int:
    from llmesh.testing.servers import free_port as fp

    return fp()


# ----- in-process baseline (runs in a child process with the chosen BLAS) -----------


def baseline_main(model_dir: str, tokens: int) -> None:
    """Child: one ``mlx_lm.stream_generate`` stream per line read from stdin.

    Prints one JSON line per run: decode tokens/s (first to last token).
    """
    from mlx_lm import load, stream_generate

    from llmesh_inference.blas import detect_blas

    loaded: Any = load(model_dir)
    model, tokenizer = loaded[0], loaded[1]
    print(json.dumps({"ready": True, "blas": detect_blas()}), flush=True)
    for line in sys.stdin:
        prompt = line.strip()
        stamps = [
            time.perf_counter()
            for _ in stream_generate(model, tokenizer, prompt, max_tokens=tokens)
        ]
        tps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        print(json.dumps({"decode_tps": tps}), flush=True)


class Baseline:
    """The in-process baseline in a child process with the chosen BLAS."""

    def __init__(self, model_dir: Path, tokens: int, mode: str) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.bench_inference"),
                *("--baseline", str(model_dir), "--tokens", str(tokens)),
            ],
            env=blas_env(mode),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.blas = str(self._read()["blas"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("baseline process died")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, prompt: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(prompt + "\n")
        self.proc.stdin.flush()
        return float(self._read()["decode_tps"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


# ----- mlx_lm.server ------------------------------------------------------------------


@contextmanager
def mlx_server(model_dir: Path, mode: str, log: Path) -> Iterator[int]:
    port = free_port()
    args = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir)]
    args += ["--port", str(port), "--decode-concurrency", "16", "--prompt-concurrency", "8"]
    args += ["--log-level", "WARNING"]
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, env=blas_env(mode), stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise TimeoutError("mlx_lm.server did not start") from None
                    time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            proc.wait(30)


def mlx_complete(port: int, prompt: str, tokens: int) -> int:
    body = json.dumps(
        {"prompt": prompt, "max_tokens": tokens, "temperature": 0.0, "stream": False}
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=900) as resp:
                reply = json.loads(resp.read())
            return int(reply["usage"]["completion_tokens"])
        except (ConnectionError, http.client.RemoteDisconnected):
            # ThreadingHTTPServer's listen backlog is 5: a burst of 16 connects can be reset.
            time.sleep(0.05 * (attempt + 1))
    return 0


def mlx_server_16(port: int, pool: Iterator[str], tokens: int) -> float:
    """Aggregate tokens/s of 16 concurrent completions on ``mlx_lm.server``."""
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda p=p: counts.append(mlx_complete(port, p, tokens)))
        for p in [next(pool) for _ in range(16)]
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)
