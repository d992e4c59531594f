"""Embedding throughput of ``MiniLMEmbedder`` (all-MiniLM-L6-v2 in MLX), in-process.

For each BLAS mode (optimized OpenBLAS preloaded with its default threads or with one
thread, and mlx-cpu's reference BLAS) a child process loads the packaged model and
measures:

- ``short``: texts of ~15 tokens (a typical memory or query), embedded in one call;
- ``medium``: texts of ~60 tokens;
- ``long``: texts truncated to the 256-token window;
- ``query``: one short text per call (the latency a ``Recall`` pays), p50/p95.

Writes ``bench/results/embeddings.json`` and prints a table. Usage::

    python -m bench.bench_embeddings [--modes openblas,openblas-1t,reference] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "embeddings.json"

_SUBJECTS = (
    "the payments service",
    "db-replica-07",
    "the nightly export job",
    "our staging cluster",
    "the search indexer",
    "Grandma Rosa",
    "the release train",
    "the billing API",
)
_EVENTS = (
    "timed out after the config push",
    "needs a new TLS certificate before Friday",
    "was moved to the second floor meeting room",
    "prefers tea without sugar in the afternoon",
    "rolled back version 3.14.2 because of error E4417",
    "lost its cache when the node rebooted",
)


def texts(kind: str, n: int) -> list[str]:
    """``n`` distinct texts of the given length class."""
    out = []
    for i in range(n):
        base = f"Note {i}: {_SUBJECTS[i % len(_SUBJECTS)]} {_EVENTS[(i // 3) % len(_EVENTS)]}."
        if kind == "medium":
            base = " ".join([base, *(_EVENTS[(i + j) % len(_EVENTS)] for j in range(4))])
        elif kind == "long":
            base = " ".join(f"{base} {_EVENTS[(i + j) % len(_EVENTS)]}" for j in range(30))
        out.append(base)
    return out


MODES = ("openblas", "openblas-1t", "reference")


def blas_env(mode: str) -> dict[str, str]:
    """Environment for a child process: ``openblas`` (one thread per core),
    ``openblas-1t`` (one OpenBLAS thread) or ``reference`` (mlx-cpu's own BLAS)."""
    from llmesh_inference.blas import REEXEC_MARKER, find_openblas_preload

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMESH_")}
    env.pop("LD_PRELOAD", None)
    env.pop("OPENBLAS_NUM_THREADS", None)
    if mode.startswith("openblas"):
        preload = find_openblas_preload()
        if preload is None:
            raise SystemExit("no optimized OpenBLAS found")
        env = preload.apply(env)
        if mode == "openblas-1t":
            env["OPENBLAS_NUM_THREADS"] = "1"
        return env
    env[REEXEC_MARKER] = "1"
    return env


def sgemm_blas() -> str:
    """``openblas`` when ``cblas_sgemm`` resolves to a preloaded OpenBLAS, else ``reference``.

    (numpy's own OpenBLAS has renamed symbols and is not what MLX calls.)
    """
    from llmesh_inference.blas import sgemm_library

    return "openblas" if "openblas" in (sgemm_library() or "") else "reference"


def worker_main(scale: float) -> None:
    """Child: measure with whatever BLAS this process has; print one JSON object."""
    from llmesh_inference.embeddings import MiniLMEmbedder

    started = time.perf_counter()
    embedder = MiniLMEmbedder.load()
    load_s = time.perf_counter() - started
    embedder.embed(texts("short", 8))  # warm-up
    out: dict[str, Any] = {
        "blas": sgemm_blas(),
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "load_s": round(load_s, 3),
        "batch": {},
    }
    for kind, n in (("short", 256), ("medium", 64), ("long", 16)):
        batch = texts(kind, max(2, int(n * scale)))
        t0, c0 = time.perf_counter(), time.process_time()
        result = embedder.embed(batch)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        out["batch"][kind] = {
            "texts": len(batch),
            "tokens": result.token_count,
            "mean_tokens": round(result.token_count / len(batch), 1),
            "seconds": round(elapsed, 3),
            "texts_per_s": round(len(batch) / elapsed, 1),
            "tokens_per_s": round(result.token_count / elapsed, 1),
            # CPU seconds of this process (all threads): less sensitive to other load.
            "cpu_seconds": round(cpu, 3),
            "tokens_per_cpu_s": round(result.token_count / cpu, 1),
        }
    latencies = []
    for text in texts("short", max(5, int(40 * scale))):
        t0 = time.perf_counter()
        embedder.embed([text])
        latencies.append((time.perf_counter() - t0) * 1000)
    latencies.sort()
    out["query"] = {
        "calls": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
    }
    print(json.dumps(out))


def run_mode(mode: str, scale: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_embeddings", "--worker", "--scale", str(scale)],
        env=blas_env(mode),
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} worker failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["scale"] = scale
    return result


def print_table(results: dict[str, Any]) -> None:
    print(
        f"{'mode':<12} {'blas':<10} {'kind':<8} {'texts':>6} {'tok/text':>9} "
        f"{'texts/s':>9} {'tokens/s':>9} {'tok/cpu-s':>10}"
    )
    for mode, r in results["modes"].items():
        for kind, b in r["batch"].items():
            print(
                f"{mode:<12} {r['blas']:<10} {kind:<8} {b['texts']:>6} {b['mean_tokens']:>9} "
                f"{b['texts_per_s']:>9} {b['tokens_per_s']:>9} {b['tokens_per_cpu_s']:>10}"
            )
        q = r["query"]
        print(
            f"{mode:<12} {r['blas']:<10} single-query latency p50 {q['p50_ms']} ms, "
            f"p95 {q['p95_ms']} ms ({q['calls']} calls)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--quick", action="store_true", help="a quarter of the texts")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.scale)
        return 0
    scale = 0.25 if args.quick else 1.0
    modes: dict[str, Any] = {}
    for mode in args.modes.split(","):
        # The reference BLAS is ~10x slower: a quarter of the texts keeps the run short.
        modes[mode] = run_mode(mode, scale / 4 if mode == "reference" else scale)
    results = {
        "benchmark": "embeddings",
        "model": "all-minilm-l6-v2 (MLX, float32)",
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
        "note": "2-core shared development machine; other sessions were running at the time",
        "modes": modes,
    }
    if "reference" in modes:
        base = modes["reference"]["batch"]
        results["speedup_vs_reference"] = {
            mode: {
                kind: round(r["batch"][kind]["tokens_per_s"] / base[kind]["tokens_per_s"], 1)
                for kind in base
            }
            for mode, r in modes.items()
            if mode != "reference"
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
