"""Soak: mixed load (``bench.load``) for a long spell, watching every service for leaks.

Starts the mesh of ``bench.load`` (registry, workers + registrars, memory, gateway), runs
a warm-up, lets the mesh go idle and takes a baseline of each service: resident memory
(``/proc/<pid>/status`` VmRSS), open file descriptors (``/proc/<pid>/fd``) and asyncio
tasks (the ``process_asyncio_tasks`` gauge on its metrics port). Then ``--duration``
seconds of load, sampled every ``--interval`` seconds, then idle again and a final
sample. Passes when, for every service, RSS grew < 10% from the idle baseline to the
idle end, and descriptors and tasks at the idle end are within a small slack of the
baseline (flat). Writes JSON and a markdown report::

    .venv/bin/python -m bench.soak                       # make soak: 600 s, 32 clients
    .venv/bin/python -m bench.soak --duration 60 --warmup 20 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.load import DEFAULT_MIX, LoadConfig, run_load, seed_memories, summarize
from bench.load_mesh import Target, started_mesh

RESULTS = Path(__file__).parent / "results"
RSS_GROWTH_MAX = 0.10
FD_SLACK = 3
TASK_SLACK = 3


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _tasks(metrics_port: int | None) -> int | None:
    if not metrics_port:
        return None
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("process_asyncio_tasks"):
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def sample(target: Target) -> dict[str, dict[str, int | None]]:
    """RSS (kB), open descriptors and asyncio tasks of every child, now."""
    return {
        name: {
            "rss_kb": _rss_kb(pid),
            "fds": _fds(pid),
            "tasks": _tasks(target.metrics_ports.get(name)),
        }
        for name, pid in target.pids.items()
    }


async def _sampler(target: Target, every_s: float, stop: asyncio.Event,
                   series: list[dict[str, Any]], started: float) -> None:  # fmt: skip
    while not stop.is_set():
        point = await asyncio.to_thread(sample, target)
        series.append({"t_s": round(time.monotonic() - started, 1), "services": point})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def _idle(target: Target, settle_s: float) -> dict[str, dict[str, int | None]]:
    await asyncio.sleep(settle_s)  # in-flight work and its cleanup end
    return await asyncio.to_thread(sample, target)


def verdict(
    baseline: dict[str, dict[str, int | None]],
    final: dict[str, dict[str, int | None]],
    series: list[dict[str, Any]],
) -> dict[str, Any]:
    """Per service: growth of RSS, fds and tasks from idle baseline to idle end."""
    services: dict[str, Any] = {}
    passed = True
    for name, base in baseline.items():
        end = final.get(name, {})
        row: dict[str, Any] = {"baseline": base, "final": end}
        in_load = [p["services"][name]["rss_kb"] for p in series if p["services"][name]["rss_kb"]]
        if in_load:
            row["rss_kb_under_load"] = {
                "first": in_load[0],
                "max": max(in_load),
                "last": in_load[-1],
                "median": statistics.median(in_load),
            }
        ok = True
        b_rss, e_rss = base.get("rss_kb"), end.get("rss_kb")
        if b_rss and e_rss:
            row["rss_growth"] = round((e_rss - b_rss) / b_rss, 4)
            ok &= row["rss_growth"] < RSS_GROWTH_MAX
        else:
            ok = False  # a service that died or cannot be read fails the soak
        for key, slack in (("fds", FD_SLACK), ("tasks", TASK_SLACK)):
            b, e = base.get(key), end.get(key)
            if b is not None and e is not None:
                row[f"{key}_delta"] = e - b
                ok &= e - b <= slack
        row["passed"] = ok
        passed &= ok
        services[name] = row
    return {
        "passed": passed,
        "rules": {
            "rss_growth_below": RSS_GROWTH_MAX,
            "fd_slack": FD_SLACK,
            "task_slack": TASK_SLACK,
        },
        "services": services,
    }


def markdown(result: dict[str, Any]) -> str:
    cond, v, load = result["conditions"], result["verdict"], result["load"]
    lines = [
        f"# Soak: {cond['duration_s']:g} s of mixed load, {cond['clients']} clients",
        "",
        f"{result['when']}; {cond['workers']} workers, tiny model; warm-up {cond['warmup_s']:g} s; "
        f"samples every {cond['interval_s']:g} s; load average {cond['loadavg_before']} before, "
        f"{cond['loadavg_after']} after. Verdict: **{'passed' if v['passed'] else 'FAILED'}** "
        f"(RSS growth < {RSS_GROWTH_MAX * 100:g}% idle to idle; fds and asyncio tasks within "
        f"+{FD_SLACK}/+{TASK_SLACK}).",
        "",
        f"Load: {load['calls']} calls, {load['ok']} ok, {load['refused']} refused, "
        f"{load['errors']} errors ({load['error_rate'] * 100:.2f}%), {load['ok_per_s']} ok/s, "
        f"{load['waited_past_deadline']} waited past their deadline.",
        "",
        "| service | RSS MB idle before | under load max | idle after | growth | fds before/after "
        "| tasks before/after | passed |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def mb(kb: int | None) -> str:
        return "-" if not kb else f"{kb / 1024:.1f}"

    for name, row in v["services"].items():
        b, e = row["baseline"], row["final"]
        peak = row.get("rss_kb_under_load", {}).get("max")
        growth = f"{row['rss_growth'] * 100:+.1f}%" if "rss_growth" in row else "-"
        lines.append(
            f"| {name} | {mb(b['rss_kb'])} | {mb(peak)} | {mb(e.get('rss_kb'))} | {growth} "
            f"| {b['fds']}/{e.get('fds')} | {b['tasks']}/{e.get('tasks')} "
            f"| {'yes' if row['passed'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


async def soak(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "interval_s": args.interval,
        "clients": args.clients,
        "workers": target.workers,
        "deadline_s": args.deadline_s,
        "mix": DEFAULT_MIX,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    await seed_memories(target.address, target.keys)
    warm = LoadConfig(clients=args.clients, duration_s=args.warmup, deadline_s=args.deadline_s)
    await run_load(target.address, target.keys, warm)
    baseline = await _idle(target, args.settle)
    cfg = LoadConfig(clients=args.clients, duration_s=args.duration, deadline_s=args.deadline_s)
    series: list[dict[str, Any]] = []
    stop = asyncio.Event()
    started = time.monotonic()
    sampler = asyncio.create_task(_sampler(target, args.interval, stop, series, started))
    samples, elapsed = await run_load(target.address, target.keys, cfg, warm_up=False)
    stop.set()
    await sampler
    final = await _idle(target, args.settle)
    cond["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": "soak",
        "when": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "conditions": cond,
        "verdict": verdict(baseline, final, series),
        "load": summarize(samples, elapsed, cfg),
        "series": series,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds of load first (60)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (32)")
    p.add_argument("--workers", type=int, default=2, help="inference workers (2)")
    p.add_argument("--interval", type=float, default=15.0, help="seconds between samples")
    p.add_argument("--settle", type=float, default=5.0, help="idle seconds before a sample")
    p.add_argument("--deadline-s", type=float, default=30.0, help="each call's deadline")
    p.add_argument("--out", type=Path, default=RESULTS / "soak.json",
                   help="JSON path; the markdown goes beside it (.md)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="llmesh-soak-") as tmp,
        started_mesh(Path(tmp), workers=args.workers) as target,
    ):
        result = asyncio.run(soak(target, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = args.out.with_suffix(".md")
    md.write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out} and {md}")
    return 0 if result["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
