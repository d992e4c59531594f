"""Registry benchmark: a simulated fleet heartbeating against one registry.

For each backend (in-memory, Redis), one run against a real ``llmesh serve
registry`` process:

* 1,000 simulated workers register, then each heartbeats once per second (phases
  spread evenly, so ~1,000 heartbeats/s) for ``--seconds``; a second round uses the
  registrar's real period with the default 10 s lease (TTL/3 = 3.33 s, ~300/s);
* every heartbeat carries new load figures, so every heartbeat is a change the
  registry streams to watchers (the worst case: ~1,000 events/s);
* one ``WatchWorkers`` client consumes the stream.

Reported: heartbeat latency (p50/p95/p99, client-observed RPC time), heartbeats
achieved per second, and change propagation (p50/p95/p99): from the moment a
heartbeat is sent to the moment the watcher receives the matching event. The
load generator and the watcher share one process and one clock.

    .venv/bin/python -m bench.bench_registry --workers 1000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import psutil

from llmesh.testing.servers import start_redis
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
from llmesh_cli.supervisor.plan import build_plan

RESULTS = Path(__file__).resolve().parent / "results" / "registry.json"
READY = common_pb2.WORKER_STATE_READY


def _percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    if not ordered:
        return {"n": 0}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "n": len(ordered),
    }


def _registry(backend: str, redis_url: str | None, ttl_ms: int, home: Path) -> LocalMesh:
    """The registry child of the ``llmesh up`` plan, with this backend and lease TTL."""
    args = ["--backend", backend, "--lease-ttl-ms", str(ttl_ms), "--evict-after-ms", "60000"]
    if redis_url:
        args += ["--redis-url", redis_url]
    options = mesh_options(
        home,
        models_dir=home,
        default_model="",
        services=("registry",),
        args={"registry": args},
        log_level="WARNING",
    )
    return LocalMesh(build_plan(options), home=home)


async def _fleet(
    port: int, *, workers: int, interval_s: float, seconds: float, warmup_s: float
) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stubs: list[Any] = [registry_pb2_grpc.RegistryServiceStub(c) for c in channels]
    watch_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    watch_stub: Any = registry_pb2_grpc.RegistryServiceStub(watch_channel)

    leases: list[str] = []
    for i in range(workers):
        reply = await stubs[i % 4].Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id=f"sim-{i:05d}",
                    address=f"10.0.{i // 250}.{i % 250}:50054",
                    labels=common_pb2.Labels(entries={"zone": f"z{i % 3}"}),
                    models_loaded=["tiny-llama-small"],
                    models_available=["tiny-llama-small"],
                    capacity=16,
                    state=READY,
                )
            ),
            timeout=10,
        )
        leases.append(reply.lease_id)

    sent_at: dict[int, float] = {}  # sequence number -> send time
    propagation_ms: list[float] = []
    heartbeat_ms: list[float] = []
    errors: dict[str, int] = {}
    measuring = False

    async def watch() -> None:
        async for message in watch_stub.WatchWorkers(registry_pb2.WatchWorkersRequest()):
            if not message.HasField("event"):
                continue
            received = time.monotonic()
            seq = int(message.event.worker.load.tokens_per_second)
            start = sent_at.pop(seq, None)
            if start is not None and measuring:
                propagation_ms.append((received - start) * 1000)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.5)

    async def beat(i: int, seq: int) -> None:
        request = registry_pb2.HeartbeatRequest(
            worker_id=f"sim-{i:05d}",
            lease_id=leases[i],
            load=common_pb2.WorkerLoad(
                active_requests=seq % 16,
                queued_requests=0,
                free_slots=16 - seq % 16,
                tokens_per_second=float(seq),
            ),
            state=READY,
        )
        start = time.monotonic()
        sent_at[seq] = start
        try:
            await stubs[i % 4].Heartbeat(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            sent_at.pop(seq, None)
            return
        if measuring:
            heartbeat_ms.append((time.monotonic() - start) * 1000)

    process_start = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    seq = 1
    total = warmup_s + seconds
    interval = interval_s / workers
    tick = 0
    measured_from = process_start + warmup_s
    while True:
        now = time.monotonic()
        if now - process_start >= total:
            break
        if not measuring and now >= measured_from:
            measuring = True
        due = int((now - process_start) / interval)
        # Fire every heartbeat that is due (catches up if the loop fell behind).
        while tick <= due:
            task = asyncio.create_task(beat(tick % workers, seq))
            pending.add(task)
            task.add_done_callback(pending.discard)
            seq += 1
            tick += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*pending)
    await asyncio.sleep(1.0)  # let the last events arrive
    measuring = False
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    for channel in (*channels, watch_channel):
        await channel.close(None)
    return {
        "heartbeat": _percentiles(heartbeat_ms),
        "heartbeats_per_s_offered": round(workers / interval_s, 1),
        "heartbeats_per_s": round(len(heartbeat_ms) / seconds, 1),
        "watch_propagation": _percentiles(propagation_ms),
        "events_lost": len([s for s, t in sent_at.items() if t >= measured_from]),
        "errors": errors,
    }


async def run_backend(backend: str, interval_s: float, args: argparse.Namespace) -> dict[str, Any]:
    redis = start_redis() if backend == "redis" else None
    # Heartbeats every TTL/3, as a registrar sends them.
    ttl_ms = round(3 * interval_s * 1000)
    home = Path(tempfile.mkdtemp(prefix="llmesh-bench-registry-"))
    registry = _registry(backend, redis.url if redis else None, ttl_ms, home)
    try:
        registry.start()
        port = registry.port("registry")
        proc = psutil.Process(registry.pid("registry"))
        proc.cpu_percent(None)
        me = psutil.Process()
        me.cpu_percent(None)
        result = await _fleet(
            port,
            workers=args.workers,
            interval_s=interval_s,
            seconds=args.seconds,
            warmup_s=args.warmup,
        )
        result["registry_cpu_percent"] = round(proc.cpu_percent(None), 1)
        result["load_generator_cpu_percent"] = round(me.cpu_percent(None), 1)
        # CPU time the registry spent per heartbeat (incl. streaming its event): a
        # capacity figure that CPU contention distorts less than latency does.
        rate = result["heartbeats_per_s"] or 1.0
        result["registry_cpu_ms_per_heartbeat"] = round(
            result["registry_cpu_percent"] * 10 / rate, 3
        )
        return {
            "backend": backend,
            "heartbeat_interval_s": round(interval_s, 3),
            "lease_ttl_ms": ttl_ms,
            **result,
        }
    finally:
        registry.close()
        shutil.rmtree(home, ignore_errors=True)
        if redis is not None:
            redis.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    load_before = os.getloadavg()
    for interval_s in args.intervals:
        for backend in args.backends:
            run = await run_backend(backend, interval_s, args)
            print(json.dumps(run), flush=True)
            runs.append(run)
    return {
        "benchmark": "registry",
        "machine": f"{os.cpu_count()} cpus (shared)",
        "workers": args.workers,
        "seconds": args.seconds,
        "load_average_1m": {
            "before": round(load_before[0], 2),
            "after": round(os.getloadavg()[0], 2),
        },
        "runs": runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument(
        "--intervals",
        type=float,
        nargs="+",
        default=[1.0, 10 / 3],
        help="heartbeat periods to run (1 s as specified; 3.33 s = TTL/3 of the default lease)",
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--backends", nargs="+", default=["memory", "redis"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
