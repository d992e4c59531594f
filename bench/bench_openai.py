"""The OpenAI door's cost: a streamed chat completion over HTTP (official ``openai`` SDK
-> door -> gateway -> worker) against the same request over gRPC straight to the gateway
(``GenerateStream``), on the plan of ``llmesh up`` with the tiny model, greedy, so both
produce the same tokens.

Reported per path (median of the rounds; runs alternate so drift hits both):
time to first token, per-token time after it, the door's and the gateway's CPU time per
request and per token (psutil on their processes) - the door's CPU is what an
in-gateway door would have put on the gateway's one event loop. A concurrent run
(``--concurrency`` streams at once) gives tokens/s both ways. Writes
``bench/results/openai.json``.

    .venv/bin/python -m bench.bench_openai [--rounds 3] [--requests 30] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import openai
import psutil

MODEL = "tiny-llama-test"
RESULTS = Path(__file__).parent / "results" / "openai.json"
MESSAGES = [{"role": "user", "content": "Tell me about the sea and the ships on it."}]


@dataclass
class Run:
    ttft_ms: list[float] = field(default_factory=list)
    per_token_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def grpc_stream(stub: Any, key: str, max_tokens: int) -> tuple[float, float, int]:
    from llmesh.v1 import common_pb2, gateway_pb2

    request = gateway_pb2.GenerateStreamRequest(
        input=common_pb2.GenerationInput(
            model=MODEL,
            messages=common_pb2.ChatMessages(
                messages=[
                    common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content=m["content"])
                    for m in MESSAGES
                ]
            ),
            sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        )
    )
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async for event in stub.GenerateStream(
        request, metadata=(("authorization", f"Bearer {key}"),), timeout=60
    ):
        if event.WhichOneof("event") == "delta" and event.delta.token_ids:
            if not first:
                first = time.perf_counter()
            tokens += len(event.delta.token_ids)
    return first - started, time.perf_counter() - first, tokens


async def http_stream(client: openai.AsyncOpenAI, max_tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    stream = await client.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL,
        messages=MESSAGES,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and not first:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first - started, time.perf_counter() - first, tokens


async def measure(
    name: str,
    call: Any,
    *,
    requests: int,
    procs: dict[str, psutil.Process],
) -> Run:
    run = Run()
    cpu0 = {n: _cpu(p) for n, p in procs.items()}
    started = time.perf_counter()
    for _ in range(requests):
        ttft, rest, tokens = await call()
        run.ttft_ms.append(ttft * 1000)
        if tokens > 1:
            run.per_token_ms.append(rest * 1000 / (tokens - 1))
        run.tokens += tokens
    run.seconds = time.perf_counter() - started
    for n, p in procs.items():
        used = _cpu(p) - cpu0[n]
        run.cpu[f"{n}_ms_per_request"] = used * 1000 / requests
        run.cpu[f"{n}_us_per_token"] = used * 1e6 / max(1, run.tokens)
    print(
        f"{name}: ttft p50 {statistics.median(run.ttft_ms):.2f} ms, per token "
        f"{statistics.median(run.per_token_ms):.3f} ms, {run.tokens} tokens, cpu {run.cpu}",
        flush=True,
    )
    return run


async def concurrent(call: Any, *, streams: int, requests: int) -> float:
    """Tokens per second with ``streams`` callers sharing ``requests`` requests."""
    queue = list(range(requests))
    total = 0

    async def worker() -> None:
        nonlocal total
        while queue:
            queue.pop()
            _, _, tokens = await call()
            total += tokens

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    return total / (time.perf_counter() - started)


def summary(runs: list[Run]) -> dict[str, float]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 4)

    out = {
        "ttft_p50_ms": med([statistics.median(r.ttft_ms) for r in runs]),
        "ttft_p90_ms": med([statistics.quantiles(r.ttft_ms, n=10)[-1] for r in runs]),
        "per_token_p50_ms": med([statistics.median(r.per_token_ms) for r in runs]),
        "tokens_per_request": med([r.tokens / len(r.ttft_ms) for r in runs]),
    }
    for key in runs[0].cpu:
        out[f"cpu_{key}"] = med([r.cpu[key] for r in runs])
    return out


async def bench(args: argparse.Namespace, mesh: Any, keys: dict[str, str]) -> dict[str, Any]:
    from llmesh.v1 import gateway_pb2_grpc

    procs = {
        "door": psutil.Process(mesh.pid("openai")),
        "gateway": psutil.Process(mesh.pid("gateway")),
    }
    client = openai.AsyncOpenAI(
        base_url=f"http://{mesh.address('openai')}/v1", api_key=keys["http"], max_retries=0
    )
    async with grpc.aio.insecure_channel(mesh.address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def via_grpc() -> tuple[float, float, int]:
            return await grpc_stream(stub, keys["grpc"], args.max_tokens)

        async def via_http() -> tuple[float, float, int]:
            return await http_stream(client, args.max_tokens)

        for call in (via_grpc, via_http):  # warm-up: connections, caches
            for _ in range(3):
                await call()
        runs: dict[str, list[Run]] = {"grpc": [], "http": []}
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            runs["grpc"].append(
                await measure("grpc", via_grpc, requests=args.requests, procs=procs)
            )
            runs["http"].append(
                await measure("http", via_http, requests=args.requests, procs=procs)
            )
        throughput = {
            "grpc_tokens_per_s": round(
                await concurrent(via_grpc, streams=args.concurrency, requests=args.requests), 1
            ),
            "http_tokens_per_s": round(
                await concurrent(via_http, streams=args.concurrency, requests=args.requests), 1
            ),
        }
    await client.close()
    grpc_s, http_s = summary(runs["grpc"]), summary(runs["http"])
    return {
        "grpc": grpc_s,
        "http": http_s,
        "added": {
            "ttft_p50_ms": round(http_s["ttft_p50_ms"] - grpc_s["ttft_p50_ms"], 4),
            "per_token_p50_ms": round(http_s["per_token_p50_ms"] - grpc_s["per_token_p50_ms"], 4),
            "door_cpu_ms_per_request": http_s["cpu_door_ms_per_request"],
            "door_cpu_us_per_token": http_s["cpu_door_us_per_token"],
        },
        "concurrent": {"streams": args.concurrency, **throughput},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan
    from llmesh_inference.tiny import init_tiny

    with tempfile.TemporaryDirectory(prefix="bench-openai-") as raw:
        tmp = Path(raw)
        init_tiny(tmp / "models" / MODEL, size="test")
        limits = {
            "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "6000000",
            "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "6000000",
            "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "600000000",
            "LLMESH_GATEWAY_RATE_LIMIT__CONCURRENT_STREAMS": "1024",
        }
        options = mesh_options(
            tmp,
            models_dir=tmp / "models",
            default_model=MODEL,
            services=("registry", "inference", "registrar", "gateway", "openai"),
            embeddings=False,
            args={
                "inference": ["--log-level", "WARNING"],
                "gateway": ["--log-level", "WARNING"],
                "openai": ["--log-level", "WARNING"],
            },
            env={"gateway": limits},
        )
        with LocalMesh(build_plan(options), home=tmp) as mesh:
            mesh.start()
            keys = {
                "grpc": mesh.create_key(role="user", tenant="bench"),
                "http": mesh.create_key(role="user", tenant="bench"),
            }
            result = asyncio.run(bench(args, mesh, keys))
    result["config"] = {
        "rounds": args.rounds,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "model": MODEL,
        "cpus": psutil.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
