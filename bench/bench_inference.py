"""Inference benchmark: our gRPC worker vs in-process mlx-lm and vs ``mlx_lm.server``.

Runs everything in one go on the same machine and the same model (the ~34M-parameter
``init-tiny --size bench`` Llama, float32), once with the optimized OpenBLAS preloaded
and once on mlx-cpu's reference BLAS:

- single stream: decode tokens/s over gRPC vs in-process ``mlx_lm.stream_generate``;
- 16 concurrent streams: aggregate tokens/s vs our single stream, and vs
  ``mlx_lm.server --decode-concurrency 16`` (the pip package's own server);
- time to first token p50/p95 at 1, 4 and 16 concurrent streams, distinct prompts.

Writes ``bench/results/inference.json`` and prints a table. Usage::

    python -m bench.bench_inference [--tokens 128] [--modes openblas,reference] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.inference_contenders import (
    BLAS_THREADS,
    Baseline,
    baseline_main,
    mlx_complete,
    mlx_server,
    mlx_server_16,
)

RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"
MODEL = "tiny-llama-bench"

_WORDS = tuple(
    [
        "river",
        "cloud",
        "worker",
        "request",
        "token",
        "batch",
        "model",
        "memory",
        "search",
        "latency",
        "queue",
        "deadline",
        "mountain",
        "ocean",
        "signal",
        "protocol",
        "cluster",
        "replica",
        "stream",
        "window",
        "kernel",
        "vector",
        "session",
        "operator",
        "metric",
        "trace",
        "error",
        "budget",
        "policy",
        "router",
        "gateway",
        "registry",
        "lease",
        "heartbeat",
    ]
)


def prompts(n: int, words: int = 20) -> list[str]:
    """``n`` distinct prompts of ``words`` words (~64 tokens; no shared prefix)."""
    out = []
    for i in range(n):
        picked = [_WORDS[(i * 7 + j * (i + 3)) % len(_WORDS)] for j in range(words)]
        out.append(f"Request {i}: " + " ".join(picked))
    return out


# ----- our worker over gRPC ------------------------------------------------------------


@contextmanager
def worker(models_dir: Path, mode: str, home: Path) -> Iterator[int]:
    """Our worker: the inference child of the ``llmesh up`` plan, on ``mode``'s BLAS
    (log in ``home/logs/inference.log``); yields its port once ready."""
    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan

    args = ["--max-batch-size", "16", "--queue-capacity", "64"]
    if mode != "openblas":
        args.append("--no-blas-preload")
    elif BLAS_THREADS[0] is not None:
        args += ["--blas-threads", str(BLAS_THREADS[0])]
    options = mesh_options(
        home,
        models_dir=models_dir,
        default_model=MODEL,
        services=("inference",),
        embeddings=False,
        log_level="WARNING",
        args={"inference": args},
        # The reference BLAS on a busy CPU needs minutes for 16 streams.
        env={
            "inference": {
                "LLMESH_INFERENCE_MAX_DEADLINE_S": "3600",
                "LLMESH_INFERENCE_METHOD_DEADLINES": '{"Generate": 3600}',
            }
        },
    )
    # No LLMESH_* settings or preload from this shell: the mode decides the BLAS.
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith("LLMESH_") and k != "LD_PRELOAD"
    }
    with LocalMesh(build_plan(options), home=home, base_env=base_env) as mesh:
        mesh.start()
        yield mesh.port("inference")


async def _stream(stub: Any, prompt: str, tokens: int) -> dict[str, float]:
    from llmesh.v1 import common_pb2, inference_pb2

    req = inference_pb2.InferenceServiceGenerateRequest(
        input=common_pb2.GenerationInput(
            prompt=prompt, sampling=common_pb2.SamplingParams(max_tokens=tokens, temperature=0)
        )
    )
    start = time.perf_counter()
    first = last = 0.0
    first_count = count = 0
    async for chunk in stub.Generate(req, timeout=3600):
        now = time.perf_counter()
        if chunk.delta.token_ids and not first:
            first, first_count = now, len(chunk.delta.token_ids)
        count += len(chunk.delta.token_ids)
        last = now
    return {
        "ttft_s": first - start,
        "total_s": last - start,
        "tokens": count,
        "decode_tps": (count - first_count) / (last - first) if last > first else 0.0,
    }


async def _concurrent(stub: Any, pool: Iterator[str], streams: int, tokens: int) -> float:
    """Aggregate tokens/s of ``streams`` concurrent streams (prefill included)."""
    started = time.perf_counter()
    many = await asyncio.gather(*(_stream(stub, next(pool), tokens) for _ in range(streams)))
    return sum(m["tokens"] for m in many) / (time.perf_counter() - started)


async def _ttft(stub: Any, pool: Iterator[str], quick: bool) -> dict[str, Any]:
    ttft: dict[str, Any] = {}
    for streams in (1, 4, 16):
        rounds = {1: 4 if quick else 8, 4: 2 if quick else 3, 16: 1}[streams]
        samples: list[float] = []
        for _ in range(rounds):
            batch = await asyncio.gather(*(_stream(stub, next(pool), 16) for _ in range(streams)))
            samples += [b["ttft_s"] * 1000 for b in batch]
        samples.sort()
        ttft[str(streams)] = {
            "p50_ms": _percentile(samples, 50),
            "p95_ms": _percentile(samples, 95),
            "samples": len(samples),
        }
    return ttft


async def _mode_suite(
    port: int, mlx_port: int, base: Baseline, *, tokens: int, rounds: int, quick: bool
) -> dict[str, Any]:
    """Interleaved rounds (best of each), so that load from other processes on a shared
    machine hits every contender alike."""
    import grpc

    from llmesh.v1 import inference_pb2, inference_pb2_grpc

    pool = iter(prompts(400))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        await _stream(stub, next(pool), 8)  # warm-up
        await asyncio.to_thread(mlx_complete, mlx_port, next(pool), 8)
        base.run(next(pool))
        inproc, single_decode, single_e2e = [], [], []
        for _ in range(3):
            inproc.append(await asyncio.to_thread(base.run, next(pool)))
            one = await _stream(stub, next(pool), tokens)
            single_decode.append(one["decode_tps"])
            single_e2e.append(one["tokens"] / one["total_s"])
        ours16, theirs16 = [], []
        for _ in range(rounds):
            ours16.append(await _concurrent(stub, pool, 16, tokens))
            theirs16.append(await asyncio.to_thread(mlx_server_16, mlx_port, pool, tokens))
        ttft = await _ttft(stub, pool, quick)
        stats = await stub.Stats(inference_pb2.StatsRequest(), timeout=5)
    return {
        "blas_in_worker": stats.blas,
        "blas_in_baseline": base.blas,
        "inprocess_decode_tps": max(inproc),
        "grpc_single_decode_tps": max(single_decode),
        "grpc_single_e2e_tps": max(single_e2e),
        "grpc_16_aggregate_tps": max(ours16),
        "mlx_server_16_aggregate_tps": max(theirs16),
        "ttft_ms": ttft,
        "samples": {
            "inprocess_decode_tps": inproc,
            "grpc_single_decode_tps": single_decode,
            "grpc_single_e2e_tps": single_e2e,
            "grpc_16_aggregate_tps": ours16,
            "mlx_server_16_aggregate_tps": theirs16,
        },
    }


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# ----- driver ---------------------------------------------------------------------------


def run(tokens: int, modes: list[str], quick: bool, output: Path = RESULTS) -> dict[str, Any]:
    from llmesh_inference.tiny import init_tiny, parameter_count

    work = Path(tempfile.mkdtemp(prefix="llmesh-bench-"))
    models_dir = work / "models"
    model_dir = init_tiny(models_dir / MODEL, size="bench")
    results: dict[str, Any] = {
        "model": {"name": MODEL, "parameters": parameter_count("bench"), "dtype": "float32"},
        "tokens_per_stream": tokens,
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
        "note": "2-core shared development machine; other sessions were running tests",
        "modes": {},
    }
    for mode in modes:
        print(f"[{mode}] in-process baseline, llmesh worker, mlx_lm.server ...", flush=True)
        rounds = 2 if mode == "openblas" else 1  # the reference BLAS takes minutes a round
        base = Baseline(model_dir, tokens, mode)
        try:
            with (
                worker(models_dir, mode, work / f"worker-{mode}") as port,
                mlx_server(model_dir, mode, work / f"mlx-server-{mode}.log") as mlx_port,
            ):
                r = asyncio.run(
                    _mode_suite(port, mlx_port, base, tokens=tokens, rounds=rounds, quick=quick)
                )
        finally:
            base.close()
        r["grpc_vs_inprocess"] = r["grpc_single_decode_tps"] / r["inprocess_decode_tps"]
        r["aggregate_16_vs_single"] = r["grpc_16_aggregate_tps"] / r["grpc_single_e2e_tps"]
        r["ours_vs_mlx_server_16"] = r["grpc_16_aggregate_tps"] / r["mlx_server_16_aggregate_tps"]
        results["modes"][mode] = r
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")  # partial, per mode
    if "openblas" in results["modes"] and "reference" in results["modes"]:
        o, r = results["modes"]["openblas"], results["modes"]["reference"]
        results["openblas_gain"] = {
            "grpc_single": o["grpc_single_decode_tps"] / r["grpc_single_decode_tps"],
            "grpc_16_aggregate": o["grpc_16_aggregate_tps"] / r["grpc_16_aggregate_tps"],
            "ttft_p50_1_stream": r["ttft_ms"]["1"]["p50_ms"] / o["ttft_ms"]["1"]["p50_ms"],
        }
        results["ours_16_openblas_vs_stock_mlx_server_16"] = (
            o["grpc_16_aggregate_tps"] / r["mlx_server_16_aggregate_tps"]
        )
    return results


def table(results: dict[str, Any]) -> str:
    rows = [
        ("in-process stream_generate, decode tok/s", "inprocess_decode_tps", "{:.1f}"),
        ("gRPC single stream, decode tok/s", "grpc_single_decode_tps", "{:.1f}"),
        ("  ratio gRPC / in-process (target >= 0.90)", "grpc_vs_inprocess", "{:.2f}"),
        ("gRPC single stream, end-to-end tok/s", "grpc_single_e2e_tps", "{:.1f}"),
        ("gRPC 16 streams, aggregate tok/s", "grpc_16_aggregate_tps", "{:.1f}"),
        ("  ratio 16 / single (target >= 5)", "aggregate_16_vs_single", "{:.2f}"),
        ("mlx_lm.server 16 streams, aggregate tok/s", "mlx_server_16_aggregate_tps", "{:.1f}"),
        ("  ratio ours / mlx_lm.server (target >= 1.0)", "ours_vs_mlx_server_16", "{:.2f}"),
    ]
    modes = list(results["modes"])
    lines = ["| measure | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for label, key, fmt in rows:
        cells = [fmt.format(results["modes"][m][key]) for m in modes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for streams in ("1", "4", "16"):
        cells = [
            "{:.0f} / {:.0f}".format(
                results["modes"][m]["ttft_ms"][streams]["p50_ms"],
                results["modes"][m]["ttft_ms"][streams]["p95_ms"],
            )
            for m in modes
        ]
        lines.append(f"| TTFT p50 / p95 ms, {streams} streams | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--modes", default="openblas,reference")
    parser.add_argument("--quick", action="store_true", help="fewer TTFT rounds")
    parser.add_argument(
        "--blas-threads", type=int, help="OpenBLAS threads for every process (default: cores)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--baseline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline:
        baseline_main(args.baseline, args.tokens)
        return 0
    BLAS_THREADS[0] = args.blas_threads
    results = run(args.tokens, args.modes.split(","), args.quick, args.output)
    results["openblas_threads"] = args.blas_threads or os.cpu_count()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
