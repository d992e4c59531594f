"""Gateway overhead: a bare pass-through asyncio gRPC proxy vs the gateway with every
feature on (API-key auth, rate limits, validation, tracing exported over OTLP, metrics,
JSON access logs), both in front of the same inference worker (tiny model), on
``Generate`` with ``max_tokens=1``.

Throughput: ``--concurrency`` callers for ``--seconds``; latency: one caller, p50/p99.
Runs alternate (proxy, gateway, proxy, gateway, ...) so drift hits both; the median of
the rounds is reported. Writes ``bench/results/gateway.json``.

    .venv/bin/python -m bench.bench_gateway [--rounds 3] [--seconds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

MODEL = "tiny-llama-test"
RESULTS = Path(__file__).parent / "results" / "gateway.json"
GENERATE = "/llmesh.v1.InferenceService/Generate"


# --- the bare proxy ---------------------------------------------------------------------


class PassThrough(grpc.GenericRpcHandler):
    """Forwards InferenceService.Generate as raw bytes: no parsing, auth, logs or metrics."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._upstream = channel.unary_stream(GENERATE, None, None)  # raw bytes both ways

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != GENERATE:
            return None
        upstream = self._upstream

        async def forward(request: bytes, context: Any) -> Any:
            remaining = context.time_remaining()
            call = upstream(request, timeout=remaining)
            async for chunk in call:
                yield chunk

        return grpc.unary_stream_rpc_method_handler(forward)


async def run_proxy(port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((PassThrough(channel),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --- the mesh ---------------------------------------------------------------------------


class Otlp:
    """A trace collector so the gateway's spans are really exported (and counted)."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        outer = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                outer.spans += sum(
                    len(s.spans) for r in request.resource_spans for s in r.scope_spans
                )
                return trace_service_pb2.ExportTraceServiceResponse()

        self.spans = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def start_mesh(tmp: Path, otlp_port: int) -> tuple[Any, dict[str, Any]]:
    """Registry, one worker (registered with a long lease) and the gateway, from the plan
    of ``llmesh up``; then the bare proxy in front of the same worker."""
    from llmesh.testing.servers import wait_for_port
    from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
    from llmesh_cli.supervisor.mesh import LocalMesh, free_port, mesh_options
    from llmesh_cli.supervisor.plan import build_plan
    from llmesh_inference.tiny import init_tiny

    models = tmp / "models"
    init_tiny(models / MODEL, size="test")
    options = mesh_options(
        tmp,
        models_dir=models,
        default_model=MODEL,
        services=("registry", "inference", "gateway"),
        metrics=("gateway",),
        embeddings=False,
        args={
            "registry": ["--lease-ttl-ms", "3600000", "--evict-after-ms", "3600000"],
            "inference": ["--log-level", "WARNING"],
        },
        env={
            "gateway": {
                "LLMESH_GATEWAY_OTLP_ENDPOINT": f"127.0.0.1:{otlp_port}",
                # Limits on, but far above what the benchmark asks for.
                "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "6000000",
                "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "600000000",
                "LLMESH_GATEWAY_RATE_LIMIT__CONCURRENT_STREAMS": "1024",
            }
        },
    )
    mesh = LocalMesh(build_plan(options), home=tmp)
    mesh.start("registry", "inference")
    with grpc.insecure_channel(mesh.address("registry")) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id="bench-worker",
                    address=mesh.address("inference"),
                    models_loaded=[MODEL],
                    state=common_pb2.WORKER_STATE_READY,
                    capacity=16,
                )
            ),
            timeout=10,
        )
    key = mesh.create_key(role="user", tenant="b")
    mesh.start("gateway")
    proxy_port = free_port()
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bench_gateway",
            "--serve-proxy",
            str(proxy_port),
            mesh.address("inference"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(proxy_port, timeout_s=60)
    ports = {"gateway": mesh.port("gateway"), "proxy": proxy_port}
    return (mesh, proxy), {"ports": ports, "key": key, "log": mesh.log("gateway")}


# --- the load ---------------------------------------------------------------------------

Call = Callable[[], Awaitable[Any]]


def make_calls(ports: dict[str, int], key: str) -> tuple[Any, Any, Call, Call]:
    from llmesh.v1 import (
        common_pb2,
        gateway_pb2,
        gateway_pb2_grpc,
        inference_pb2,
        inference_pb2_grpc,
    )

    sampling = common_pb2.SamplingParams(max_tokens=1, temperature=0.0)
    proxy_channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['proxy']}")
    gateway_channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['gateway']}")
    inference = inference_pb2_grpc.InferenceServiceStub(proxy_channel)
    gateway = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    generation = common_pb2.GenerationInput(prompt="hello", sampling=sampling)
    worker_request = inference_pb2.InferenceServiceGenerateRequest(input=generation)
    gateway_request = gateway_pb2.GenerateRequest(input=generation)
    metadata = (("authorization", f"Bearer {key}"),)

    async def via_proxy() -> Any:
        chunks = [c async for c in inference.Generate(worker_request, timeout=30)]
        assert chunks[-1].done.finish_reason
        return chunks

    async def via_gateway() -> Any:
        reply = await gateway.Generate(gateway_request, metadata=metadata, timeout=30)
        assert reply.finish_reason
        return reply

    return proxy_channel, gateway_channel, via_proxy, via_gateway


async def throughput(call: Call, *, concurrency: int, seconds: float) -> tuple[int, float]:
    """(calls done, seconds taken) with ``concurrency`` callers for about ``seconds``."""
    done = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done, time.perf_counter() - started


async def paired_latency(first: Call, second: Call, *, requests: int) -> tuple[list[float], ...]:
    """One caller alternating the two paths call by call, so both see the same machine."""
    a: list[float] = []
    b: list[float] = []
    for i in range(requests):
        order = ((first, a), (second, b)) if i % 2 == 0 else ((second, b), (first, a))
        for call, samples in order:
            started = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - started) * 1000)
    return a, b


def summary_of(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered),
        "p90_ms": ordered[int(len(ordered) * 0.9)],
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean_ms": statistics.fmean(ordered),
    }


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def measure(
    args: argparse.Namespace, ports: dict[str, int], key: str, pids: dict[str, int]
) -> dict[str, Any]:
    proxy_channel, gateway_channel, via_proxy, via_gateway = make_calls(ports, key)
    for call in (via_proxy, via_gateway):  # warm up connections, model, caches
        await throughput(call, concurrency=4, seconds=1.0)
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        row: dict[str, Any] = {"round": index + 1}
        # Throughput in alternating 1-second slices, so drift hits both paths alike.
        totals: dict[str, list[float]] = {"proxy": [0, 0.0, 0.0], "gateway": [0, 0.0, 0.0]}
        slices = max(1, round(args.seconds))
        for i in range(slices * 2):
            name, call = (("proxy", via_proxy), ("gateway", via_gateway))[(i + index) % 2]
            cpu_before = _cpu_s(pids[name])
            calls, took = await throughput(call, concurrency=args.concurrency, seconds=1.0)
            totals[name][0] += calls
            totals[name][1] += took
            totals[name][2] += _cpu_s(pids[name]) - cpu_before
        for name, (done, took, cpu) in totals.items():
            row[f"{name}_rps"] = done / took
            row[f"{name}_cpu_ms_per_request"] = cpu * 1000 / max(1.0, done)
        proxy_ms, gateway_ms = await paired_latency(
            via_proxy, via_gateway, requests=args.latency_requests
        )
        row["proxy_latency"] = summary_of(proxy_ms)
        row["gateway_latency"] = summary_of(gateway_ms)
        row["throughput_ratio"] = row["gateway_rps"] / row["proxy_rps"]
        row["added_p50_ms"] = row["gateway_latency"]["p50_ms"] - row["proxy_latency"]["p50_ms"]
        row["paired_median_diff_ms"] = statistics.median(
            g - p for g, p in zip(gateway_ms, proxy_ms, strict=True)
        )
        print(
            f"round {index + 1}: proxy {row['proxy_rps']:.0f} rps p50 "
            f"{row['proxy_latency']['p50_ms']:.2f} ms | gateway {row['gateway_rps']:.0f} rps "
            f"p50 {row['gateway_latency']['p50_ms']:.2f} ms | ratio "
            f"{row['throughput_ratio']:.3f}, added p50 {row['added_p50_ms']:.3f} ms "
            f"(paired median {row['paired_median_diff_ms']:.3f} ms) | cpu/request proxy "
            f"{row['proxy_cpu_ms_per_request']:.3f} ms, gateway "
            f"{row['gateway_cpu_ms_per_request']:.3f} ms",
            flush=True,
        )
        rounds.append(row)
    await proxy_channel.close()
    await gateway_channel.close()
    return {
        "throughput_ratio": statistics.median(r["throughput_ratio"] for r in rounds),
        "added_p50_ms": statistics.median(r["added_p50_ms"] for r in rounds),
        "paired_median_diff_ms": statistics.median(r["paired_median_diff_ms"] for r in rounds),
        "proxy_cpu_ms_per_request": statistics.median(
            r["proxy_cpu_ms_per_request"] for r in rounds
        ),
        "gateway_cpu_ms_per_request": statistics.median(
            r["gateway_cpu_ms_per_request"] for r in rounds
        ),
        "proxy_rps": statistics.median(r["proxy_rps"] for r in rounds),
        "gateway_rps": statistics.median(r["gateway_rps"] for r in rounds),
        "proxy_p50_ms": statistics.median(r["proxy_latency"]["p50_ms"] for r in rounds),
        "gateway_p50_ms": statistics.median(r["gateway_latency"]["p50_ms"] for r in rounds),
        "rounds": rounds,
    }


async def own_code_us(iterations: int = 20000) -> dict[str, float]:
    """CPU microseconds per request of the gateway's own steps, in-process, no network:
    authentication (cached key), validation, rate-limit admission (two buckets, a stream
    slot, the refund), worker choice and upstream request building."""
    from llmesh.kernel.context import RequestContext, set_request
    from llmesh.kernel.upstream import OutboundCall
    from llmesh.kernel.validation import RequestValidator
    from llmesh.v1 import common_pb2, gateway_pb2, inference_pb2, registry_pb2
    from llmesh_gateway.apikeys import ApiKeyManager
    from llmesh_gateway.audit import AuditLog
    from llmesh_gateway.auth import Authenticator, AuthGuard
    from llmesh_gateway.balancer import Balancer
    from llmesh_gateway.ratelimit import InProcessBackend, Limits, RateLimiter
    from llmesh_gateway.registry_cache import RegistryCache
    from llmesh_gateway.store_factory import open_store

    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"sqlite:///{tmp}/gw.db")
        keys = ApiKeyManager(store)
        key = (await keys.create(name="b", role="user", tenant="b")).api_key
        limiter = RateLimiter(
            InProcessBackend(),
            Limits(generations_per_minute=1e12, tokens_per_minute=1e15, concurrent_streams=10**6),
        )
        auth = AuthGuard()
        auth.bind(Authenticator(keys), AuditLog(store), limiter)
        cache = RegistryCache()
        cache.apply(
            registry_pb2.WatchWorkersResponse(
                revision=1,
                snapshot=registry_pb2.WorkerSnapshot(
                    workers=[
                        common_pb2.WorkerInfo(
                            worker_id=f"w{i}",
                            address=f"127.0.0.1:{6000 + i}",
                            models_loaded=[MODEL],
                            state=common_pb2.WORKER_STATE_READY,
                        )
                        for i in range(4)
                    ]
                ),
            )
        )
        balancer = Balancer(cache)
        validator = RequestValidator()
        request = gateway_pb2.GenerateRequest(
            input=common_pb2.GenerationInput(
                prompt="hello", sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0)
            )
        )
        method = "/llmesh.v1.GatewayService/Generate"
        set_request(RequestContext(request_id="r", method=method, deadline=time.monotonic() + 1e6))
        header = f"Bearer {key}"
        started = time.process_time()  # CPU time: preemption on a busy box does not count
        for _ in range(iterations):
            principal = await auth.admit(method, header)
            validator.check(request)
            charged = await limiter.admit_generation(principal, 1)
            async with limiter.stream_slot(principal):
                worker = balancer.choose(request.input.model)
                balancer.started(worker.worker_id)
                outbound = OutboundCall("llmesh.v1.InferenceService/Generate")
                inference_pb2.InferenceServiceGenerateRequest(input=request.input)
                outbound.finish()
                balancer.finished(worker.worker_id)
            await limiter.settle_tokens(principal, charged, 1)
        per_request = (time.process_time() - started) / iterations * 1e6
        await store.close()
    return {"own_code_us_per_request": per_request}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve-proxy", nargs=2, metavar=("PORT", "UPSTREAM"))
    args = parser.parse_args(argv)
    if args.serve_proxy:
        asyncio.run(run_proxy(int(args.serve_proxy[0]), args.serve_proxy[1]))
        return 0

    otlp = Otlp()
    with tempfile.TemporaryDirectory(prefix="llmesh-bench-gw-") as name:
        tmp = Path(name)
        (mesh, proxy), info = start_mesh(tmp, otlp.port)
        try:
            pids = {"gateway": mesh.pid("gateway"), "proxy": proxy.pid}
            summary = asyncio.run(measure(args, info["ports"], info["key"], pids))
            access_lines = sum(1 for line in info["log"].open() if '"llmesh.access"' in line)
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(timeout=15)
            mesh.close()
        otlp.server.stop(0)
    result = {
        "benchmark": "gateway",
        "what": "Generate max_tokens=1 via bare pass-through proxy vs gateway (all features)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "params": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "latency_requests": args.latency_requests,
            "model": MODEL,
        },
        "targets": {"throughput_ratio_min": 0.80, "added_p50_ms_max": 0.5},
        "gateway_features": {
            "auth": "API key (HMAC-SHA256, cached record)",
            "rate_limit": "in-process token buckets + stream slots",
            "validation": True,
            "tracing": f"OTLP export ({otlp.spans} spans received)",
            "metrics": "Prometheus endpoint on",
            "access_log_lines": access_lines,
        },
        **summary,
    }
    result.update(asyncio.run(own_code_us()))
    result["meets_targets"] = result["throughput_ratio"] >= 0.80 and result["added_p50_ms"] <= 0.5
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"throughput ratio {result['throughput_ratio']:.3f} (target >= 0.80), added p50 "
        f"{result['added_p50_ms']:.3f} ms (target <= 0.5) -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
