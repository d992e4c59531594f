"""Entry point of ``llmesh serve memory``: flags and settings; the parts are wired in
:mod:`llmesh_memory.wiring`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from llmesh.kernel.cli import parse_service_args, service_parser
from llmesh.kernel.server import run_service
from llmesh_memory.settings import MemorySettings


def build_parser() -> argparse.ArgumentParser:
    parser = service_parser(
        "memory",
        "Sessions and long-term memory with hybrid search "
        "(settings also from LLMESH_MEMORY_* env).",
    )
    parser.add_argument("--store", choices=["sqlite", "postgres"], help="storage backend")
    parser.add_argument("--sqlite-path", help="SQLite file (default <data-dir>/memory.db)")
    parser.add_argument("--postgres-dsn-file", help="file holding the PostgreSQL DSN")
    parser.add_argument("--redis-url", help="redis://host:port/db session cache")
    parser.add_argument("--embedder", help="host:port of an inference worker (Embed)")
    parser.add_argument(
        "--embedder-registry",
        help="host:port of the registry: embed on the READY workers it lists (failover)",
    )
    parser.add_argument(
        "--local-embedder",
        action="store_const",
        const=True,
        help="embed in this process (MiniLM in MLX) instead of calling a worker",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "store": args.store,
        "sqlite_path": args.sqlite_path,
        "postgres_dsn_file": args.postgres_dsn_file,
        "redis_url": args.redis_url,
        "embedder_target": args.embedder,
        "embedder_registry": args.embedder_registry,
        "local_embedder": args.local_embedder,
    }


def limit_blas_threads(threads: int) -> None:
    """Cap NumPy's OpenBLAS threads (vector search) before NumPy is first imported.

    A matrix-vector product over a namespace's vectors gains nothing from extra
    threads, and on a busy host they spin waiting for a core (10k x 384: ~1 ms with one
    thread, ~8 ms with two on a loaded 2-core box).
    """
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))


def main(argv: Sequence[str]) -> int:
    """``llmesh serve memory [flags]``; returns the exit code (2 for bad settings)."""
    limit_blas_threads(1)
    settings, _ = parse_service_args(MemorySettings, build_parser(), argv, extra=_overrides)
    if settings.local_embedder:
        # MLX on Linux CPUs needs an optimized BLAS preloaded before it loads (~10x).
        from llmesh.blas import reexec_with_openblas

        reexec_with_openblas(
            list(argv), module="llmesh_memory", switch="LLMESH_MEMORY_BLAS_PRELOAD"
        )

    from llmesh_memory.wiring import SERVICE_NAMES, wire

    return run_service(
        settings,
        service="memory",
        service_names=list(SERVICE_NAMES),
        setup=lambda host: wire(host, settings),
    )
