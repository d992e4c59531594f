"""Mixed load through the gateway: N clients for T seconds, what held and what did not.

Each client loops until the time is up, picking a method by weight (``--mix``):
``GenerateStream`` and ``Chat`` (streaming: latency and time to first token), ``Embed``
and ``Recall`` (unary). Every call carries a deadline (``--deadline-s``). Outcomes:

- **ok**;
- **refused**: ``RESOURCE_EXHAUSTED`` (queue full, load shed, rate limit), deliberate and
  counted apart by reason; the client waits the ``RetryInfo`` delay (capped) before its
  next call, as a well-behaved client does;
- **errors**: anything else, by code and ``ErrorInfo`` reason. ``DEADLINE_EXCEEDED`` is
  also counted as **waited past its deadline** (split by whether a first token came):
  a request the mesh should have refused early instead of letting it wait.

The target (issue 19): with two workers, 200 clients for 60 s, errors < 0.1% of calls
and no call waiting past its deadline. Writes JSON and a markdown report::

    .venv/bin/python -m bench.load --clients 200 --duration 60 --workers 2
    .venv/bin/python -m bench.load --address 127.0.0.1:50051 --key KEY --clients 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

RESULTS = Path(__file__).parent / "results"
METHODS = ("generate_stream", "chat", "embed", "recall")
DEFAULT_MIX = {"generate_stream": 4.0, "chat": 2.0, "embed": 2.0, "recall": 2.0}
ERROR_RATE_TARGET = 0.001
RETRY_CAP_S = 5.0

PROMPTS = (
    "Tell me about the sea",
    "Write a short line about mountains",
    "List three colours",
    "What is a mesh of services",
    "Describe a quiet morning",
)
FACTS = (
    "The staging cluster runs in the Frankfurt region",
    "Our on-call rotation changes every Monday at nine",
    "The billing service is written in Go",
    "Backups are kept for thirty days",
    "The design review happens on Thursdays",
    "The main database is PostgreSQL sixteen",
    "Release notes go to the engineering channel",
    "The office plant is called Ferdinand",
)


@dataclass
class Sample:
    """One call's outcome."""

    method: str
    code: str  # grpc.StatusCode name, "OK", or "CLIENT_ERROR"
    reason: str  # ErrorInfo reason, if any
    latency_s: float
    deadline_s: float
    ttft_s: float | None = None
    tokens: int = 0
    retry_after_s: float = 0.0
    degraded: bool = False  # Recall/Chat answered without semantic search

    @property
    def refused(self) -> bool:
        return self.code == "RESOURCE_EXHAUSTED"

    @property
    def error(self) -> bool:
        return self.code not in ("OK", "RESOURCE_EXHAUSTED")


@dataclass
class LoadConfig:
    """What the clients do."""

    clients: int
    duration_s: float
    deadline_s: float = 30.0
    max_tokens: int = 16
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    chat_turns_per_session: int = 4
    seed: int = 7


# --- calls ------------------------------------------------------------------------------


def _failure(exc: grpc.aio.AioRpcError) -> tuple[str, str, float]:
    """(code name, ErrorInfo reason, RetryInfo delay) of a failed call."""
    from llmesh.testing.rpc import error_details

    details = error_details(exc)
    reason = details["error_info"].reason if "error_info" in details else ""
    retry = 0.0
    if "retry_info" in details:
        delay = details["retry_info"].retry_delay
        retry = delay.seconds + delay.nanos / 1e9
    return exc.code().name, reason, retry


class Caller:
    """The gateway's stubs and one client's state (its chat session)."""

    def __init__(self, channel: grpc.aio.Channel, key: str, client: int, cfg: LoadConfig):
        from llmesh.v1 import gateway_pb2_grpc

        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.client = client
        self.cfg = cfg
        self.rng = random.Random(cfg.seed * 100_003 + client)
        self.turns = 0
        self.session = ""
        self.degraded = False

    def _vary(self, texts: Sequence[str]) -> str:
        """One of ``texts`` made unique, as real traffic is (no cache answers it)."""
        return f"{self.rng.choice(texts)} (case {self.rng.randrange(10**9)})"

    def _sampling(self) -> Any:
        from llmesh.v1 import common_pb2

        return common_pb2.SamplingParams(temperature=0.0, max_tokens=self.cfg.max_tokens)

    async def call(self, method: str) -> Sample:
        start = time.perf_counter()
        ttft: list[float] = []
        tokens = 0
        self.degraded = False
        try:
            tokens = await getattr(self, method)(start, ttft)
        except grpc.aio.AioRpcError as exc:
            code, reason, retry = _failure(exc)
            return Sample(
                method,
                code,
                reason,
                time.perf_counter() - start,
                self.cfg.deadline_s,
                ttft[0] if ttft else None,
                retry_after_s=retry,
            )
        except Exception as exc:  # a client-side fault is a result too, not a crash
            return Sample(
                method,
                "CLIENT_ERROR",
                type(exc).__name__,
                time.perf_counter() - start,
                self.cfg.deadline_s,
            )
        return Sample(
            method,
            "OK",
            "",
            time.perf_counter() - start,
            self.cfg.deadline_s,
            ttft[0] if ttft else None,
            tokens,
            degraded=self.degraded,
        )

    async def generate_stream(self, start: float, ttft: list[float]) -> int:
        from llmesh.v1 import common_pb2, gateway_pb2

        request = gateway_pb2.GenerateStreamRequest(
            input=common_pb2.GenerationInput(
                prompt=self.rng.choice(PROMPTS), sampling=self._sampling()
            )
        )
        tokens = 0
        stream = self.stub.GenerateStream(
            request, metadata=self.metadata, timeout=self.cfg.deadline_s
        )
        async for event in stream:
            if event.HasField("delta") and not ttft:
                ttft.append(time.perf_counter() - start)
            elif event.HasField("done"):
                tokens = event.done.usage.completion_tokens
        return tokens

    async def chat(self, start: float, ttft: list[float]) -> int:
        from llmesh.v1 import gateway_pb2

        if not self.session or self.turns >= self.cfg.chat_turns_per_session:
            self.session = f"load-{self.client}-{uuid.uuid4().hex[:12]}"
            self.turns = 0
        self.turns += 1
        request = gateway_pb2.ChatRequest(
            session_id=self.session,
            message=self._vary(PROMPTS),
            sampling=self._sampling(),
            idempotency_key=uuid.uuid4().hex,
            history_limit=8,
        )
        tokens = 0
        stream = self.stub.Chat(request, metadata=self.metadata, timeout=self.cfg.deadline_s)
        async for event in stream:
            if event.HasField("start"):
                self.degraded = event.start.recall_degraded
            elif event.HasField("delta") and not ttft:
                ttft.append(time.perf_counter() - start)
            elif event.HasField("done"):
                tokens = event.done.usage.completion_tokens
        return tokens

    async def embed(self, start: float, ttft: list[float]) -> int:
        from llmesh.v1 import gateway_pb2

        texts = [self._vary(FACTS), self._vary(FACTS)]
        reply = await self.stub.Embed(
            gateway_pb2.EmbedRequest(texts=texts),
            metadata=self.metadata,
            timeout=self.cfg.deadline_s,
        )
        if len(reply.embeddings) != len(texts):
            raise AssertionError(f"{len(reply.embeddings)} embeddings for {len(texts)} texts")
        return 0

    async def recall(self, start: float, ttft: list[float]) -> int:
        from llmesh.v1 import common_pb2, gateway_pb2

        reply = await self.stub.Recall(
            gateway_pb2.RecallRequest(
                query=self._vary(FACTS), options=common_pb2.RecallOptions(k=5)
            ),
            metadata=self.metadata,
            timeout=self.cfg.deadline_s,
        )
        self.degraded = reply.degraded
        return 0


async def seed_memories(address: str, keys: Sequence[str]) -> None:
    """Store the facts in every tenant (idempotent), so Recall and Chat find something."""
    from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for key in keys:
            for i, fact in enumerate(FACTS):
                await stub.Remember(
                    gateway_pb2.RememberRequest(
                        memory=common_pb2.MemoryDraft(text=fact, idempotency_key=f"load-fact-{i}")
                    ),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=60,
                )


# --- the run ----------------------------------------------------------------------------


def _channels(address: str, count: int) -> list[grpc.aio.Channel]:
    # Separate HTTP/2 connections (a local subchannel pool each), as separate clients have.
    options = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]


async def _client(caller: Caller, methods: list[str], weights: list[float], stop_at: float,
                  samples: list[Sample]) -> None:  # fmt: skip
    await asyncio.sleep(caller.rng.random() * 0.5)  # not all in the same millisecond
    while time.monotonic() < stop_at:
        sample = await caller.call(caller.rng.choices(methods, weights)[0])
        samples.append(sample)
        if sample.refused or sample.error:
            pause = min(RETRY_CAP_S, sample.retry_after_s or 0.2)
            await asyncio.sleep(min(pause, max(0.0, stop_at - time.monotonic())))


async def run_load(address: str, keys: Sequence[str], cfg: LoadConfig,
                   *, warm_up: bool = True) -> tuple[list[Sample], float]:  # fmt: skip
    """Drive ``cfg.clients`` clients for ``cfg.duration_s``; (samples, seconds elapsed).

    Calls still in flight when the time is up run to their end and are counted.
    """
    methods = [m for m in METHODS if cfg.mix.get(m, 0) > 0]
    weights = [cfg.mix[m] for m in methods]
    channels = _channels(address, max(1, min(8, cfg.clients // 25)))
    try:
        if warm_up:  # one call of each method per key, not counted
            for i, key in enumerate(keys):
                warm = Caller(channels[0], key, -1 - i, cfg)
                for method in methods:
                    await warm.call(method)
        samples: list[Sample] = []
        callers = [
            Caller(channels[i % len(channels)], keys[i % len(keys)], i, cfg)
            for i in range(cfg.clients)
        ]
        started = time.monotonic()
        stop_at = started + cfg.duration_s
        await asyncio.gather(*(_client(c, methods, weights, stop_at, samples) for c in callers))
        return samples, time.monotonic() - started
    finally:
        for channel in channels:
            await channel.close()


# --- the report -------------------------------------------------------------------------


def _pcts(values: Iterable[float]) -> dict[str, float] | None:
    data = sorted(values)
    if not data:
        return None

    def pct(q: float) -> float:
        return round(data[min(len(data) - 1, int(q * len(data)))] * 1000, 1)

    return {
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": round(data[-1] * 1000, 1),
        "mean": round(statistics.fmean(data) * 1000, 1),
    }


def summarize(samples: Sequence[Sample], elapsed_s: float, cfg: LoadConfig) -> dict[str, Any]:
    """Figures of a run (latencies in ms, of the calls that succeeded)."""
    methods: dict[str, Any] = {}
    for method in METHODS:
        mine = [s for s in samples if s.method == method]
        if not mine:
            continue
        ok = [s for s in mine if s.code == "OK"]
        methods[method] = {
            "calls": len(mine),
            "ok": len(ok),
            "refused": sum(s.refused for s in mine),
            "errors": sum(s.error for s in mine),
            "ok_per_s": round(len(ok) / elapsed_s, 2),
            "latency_ms": _pcts(s.latency_s for s in ok),
            "ttft_ms": _pcts(s.ttft_s for s in ok if s.ttft_s is not None),
            "tokens": sum(s.tokens for s in ok),
            "degraded": sum(s.degraded for s in ok),
        }
    errors = [s for s in samples if s.error]
    refused = [s for s in samples if s.refused]
    late = [s for s in samples if s.code == "DEADLINE_EXCEEDED"]
    ok_count = sum(s.code == "OK" for s in samples)
    total = len(samples)
    error_rate = len(errors) / total if total else 0.0

    def by_code(items: Iterable[Sample]) -> dict[str, int]:
        counts = Counter(f"{s.code}/{s.reason}" if s.reason else s.code for s in items)
        return dict(counts.most_common())

    return {
        "calls": total,
        "ok": ok_count,
        "refused": len(refused),
        "errors": len(errors),
        "error_rate": round(error_rate, 5),
        "refused_rate": round(len(refused) / total, 5) if total else 0.0,
        "waited_past_deadline": len(late),
        "waited_past_deadline_before_first_token": sum(s.ttft_s is None for s in late),
        "ok_per_s": round(ok_count / elapsed_s, 2),
        "tokens_per_s": round(sum(s.tokens for s in samples) / elapsed_s, 1),
        "elapsed_s": round(elapsed_s, 1),
        "methods": methods,
        "errors_by_code": by_code(errors),
        "refusals_by_reason": by_code(refused),
        "refusal_latency_ms": _pcts(s.latency_s for s in refused),
        "late_latency_ms": _pcts(s.latency_s for s in late),
        "target": {
            "error_rate_below": ERROR_RATE_TARGET,
            "waited_past_deadline": 0,
            "met": error_rate < ERROR_RATE_TARGET and not late,
        },
    }


def _ms(p: dict[str, float] | None, key: str) -> str:
    return "-" if p is None else f"{p[key]:g}"


def markdown(result: dict[str, Any]) -> str:
    """A short report of ``result`` (what :func:`main` writes beside the JSON)."""
    cond = result["conditions"]
    s = result["summary"]
    lines = [
        f"# Load: {cond['clients']} clients for {cond['duration_s']:g} s",
        "",
        f"{result['when']}; target {cond['target']}; {cond['workers'] or '?'} worker(s), "
        f"model {cond['model']}; deadline {cond['deadline_s']:g} s, max_tokens "
        f"{cond['max_tokens']}; mix {cond['mix']}; {cond['cpus']} CPUs, load average "
        f"{cond['loadavg_before']} before, {cond['loadavg_after']} after.",
        "",
        f"- calls {s['calls']}: ok {s['ok']}, refused (RESOURCE_EXHAUSTED) {s['refused']}, "
        f"errors {s['errors']} ({s['error_rate'] * 100:.2f}%)",
        f"- waited past their deadline: {s['waited_past_deadline']} "
        f"({s['waited_past_deadline_before_first_token']} before a first token)",
        f"- throughput: {s['ok_per_s']} ok calls/s, {s['tokens_per_s']} tokens/s "
        f"over {s['elapsed_s']} s",
        f"- target (< {ERROR_RATE_TARGET * 100:g}% errors, none late): "
        f"{'met' if s['target']['met'] else 'MISSED'}",
        "",
        "| method | calls | ok | refused | errors | ok/s | p50 ms | p95 ms | p99 ms "
        "| TTFT p50 | TTFT p95 | TTFT p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["methods"].items():
        lat, ttft = m["latency_ms"], m["ttft_ms"]
        lines.append(
            f"| {name} | {m['calls']} | {m['ok']} | {m['refused']} | {m['errors']} "
            f"| {m['ok_per_s']} | {_ms(lat, 'p50')} | {_ms(lat, 'p95')} | {_ms(lat, 'p99')} "
            f"| {_ms(ttft, 'p50')} | {_ms(ttft, 'p95')} | {_ms(ttft, 'p99')} |"
        )
    degraded = [
        f"{name} {m['degraded']} of {m['ok']}"
        for name, m in s["methods"].items()
        if name in ("chat", "recall") and m.get("degraded") is not None
    ]
    if degraded:
        lines += ["", "Answered without semantic search (recall degraded): " + ", ".join(degraded)]
    for title, key in (("Errors", "errors_by_code"), ("Refusals", "refusals_by_reason")):
        if s[key]:
            lines += ["", f"{title}: " + ", ".join(f"{k} {v}" for k, v in s[key].items())]
    if s["refusal_latency_ms"]:
        r = s["refusal_latency_ms"]
        lines.append(f"Refusals answered in p50 {r['p50']:g} ms, p99 {r['p99']:g} ms.")
    if s["late_latency_ms"]:
        r = s["late_latency_ms"]
        lines.append(f"Late calls ended after p50 {r['p50']:g} ms, max {r['max']:g} ms.")
    return "\n".join(lines) + "\n"


def conditions(cfg: LoadConfig, *, target: str, workers: int) -> dict[str, Any]:
    return {
        "clients": cfg.clients,
        "duration_s": cfg.duration_s,
        "deadline_s": cfg.deadline_s,
        "max_tokens": cfg.max_tokens,
        "mix": cfg.mix,
        "target": target,
        "workers": workers,
        "model": "tiny-llama-test" if target == "started mesh" else "(the target's default)",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def write_report(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``out`` (JSON) and the same name with ``.md``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(result))
    return out, md


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in METHODS:
            raise argparse.ArgumentTypeError(f"--mix: {name!r} is not one of {METHODS}")
        mix[name.strip()] = float(weight or 1)
    return mix


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=200, help="concurrent clients (200)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    p.add_argument("--workers", type=int, default=2, help="workers of the started mesh (2)")
    p.add_argument("--address", help="load this gateway instead of starting a mesh")
    p.add_argument("--key", action="append", default=[], help="API key (with --address)")
    p.add_argument("--deadline-s", type=float, default=30.0, help="each call's deadline (30)")
    p.add_argument("--max-tokens", type=int, default=16, help="per generation (16)")
    p.add_argument("--mix", type=parse_mix, default=dict(DEFAULT_MIX),
                   help="method=weight,... of " + ",".join(METHODS))  # fmt: skip
    p.add_argument("--blas-threads", type=int,
                   help="OpenBLAS threads of each started worker (one per core)")  # fmt: skip
    p.add_argument("--home", type=Path, help="folder of the started mesh, kept (logs)")
    p.add_argument("--out", type=Path, default=RESULTS / "load.json",
                   help="JSON path; the markdown goes beside it (.md)")  # fmt: skip
    return p


async def run(args: argparse.Namespace, target: Any) -> dict[str, Any]:
    cfg = LoadConfig(
        clients=args.clients,
        duration_s=args.duration,
        deadline_s=args.deadline_s,
        max_tokens=args.max_tokens,
        mix=args.mix,
    )
    where = "started mesh" if args.address is None else args.address
    cond = conditions(cfg, target=where, workers=target.workers)
    cond["blas_threads"] = getattr(args, "blas_threads", None) or "one per core"
    await seed_memories(target.address, target.keys)
    samples, elapsed = await run_load(target.address, target.keys, cfg)
    cond["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": "load",
        "when": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "conditions": cond,
        "summary": summarize(samples, elapsed, cfg),
        "config": asdict(cfg),
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.address is not None:
        from bench.load_mesh import Target

        if not args.key:
            print("--address needs at least one --key", file=sys.stderr)
            return 2
        result = asyncio.run(run(args, Target(address=args.address, keys=args.key)))
    else:
        from bench.load_mesh import started_mesh

        with tempfile.TemporaryDirectory(prefix="llmesh-load-") as tmp:
            home = args.home or Path(tmp)
            home.mkdir(parents=True, exist_ok=True)
            extra = [] if args.blas_threads is None else ["--blas-threads", str(args.blas_threads)]
            with started_mesh(home, workers=args.workers, worker_args=extra) as target:
                result = asyncio.run(run(args, target))
    json_path, md_path = write_report(result, args.out)
    print(markdown(result))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
