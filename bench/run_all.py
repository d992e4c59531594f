"""Run every benchmark in turn (``make bench``); each writes bench/results/<name>.json.

``python -m bench.run_all [--only NAME ...]``. Benchmarks run one at a time so they do
not compete for the CPU; a failing one is reported and the others still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS: tuple[str, ...] = (
    "bench_embeddings",
    "bench_inference",
    "bench_recall_quality",
    "bench_memory_use",  # Chat's memory use on SmolLM2-135M (~6 min on 2 cores)
    "bench_memory",
    "bench_registry",
    "bench_gateway",
    "bench_openai",
    "bench_llamacpp",  # skips itself when `make llama-server` has not been run
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run just these")
    args = parser.parse_args(argv)
    failed: list[str] = []
    for name in args.only or BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f}s ===", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all benchmarks done; figures in docs/performance.md, JSON in bench/results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
