"""``llmesh serve inference``: parse flags, arrange the BLAS, run the server (the parts
are wired in :mod:`llmesh_inference.wiring`).

Settings are parsed and validated before anything heavy is imported. On Linux the
process then re-executes itself once with an optimized OpenBLAS preloaded (see
:mod:`llmesh_inference.blas`), and only then imports MLX.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmesh.kernel.cli import parse_service_args, service_parser
from llmesh_inference.settings import InferenceSettings


def build_parser() -> argparse.ArgumentParser:
    parser = service_parser(
        "inference", "MLX inference worker: continuous batching, model cache, embeddings."
    )
    parser.add_argument("--models-dir", type=Path, help="folder of mlx-lm model folders")
    parser.add_argument("--default-model", help="model used when a request names none")
    parser.add_argument(
        "--preload", action="append", dest="preload_models", help="also load this model at start"
    )
    parser.add_argument("--max-loaded-models", type=int, help="LRU cache size")
    parser.add_argument("--memory-budget-mb", type=int, help="budget for loaded weights")
    parser.add_argument("--idle-unload-s", type=float, help="unload models idle this long")
    parser.add_argument("--max-batch-size", type=int, help="requests decoded together")
    parser.add_argument("--queue-capacity", type=int, help="requests waiting for a slot")
    parser.add_argument("--prefill-step-size", type=int, help="prompt tokens per prefill chunk")
    parser.add_argument(
        "--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="weight dtype"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], help="MLX device")
    parser.add_argument("--blas-threads", type=int, help="OpenBLAS threads (default: one per core)")
    parser.add_argument(
        "--no-blas-preload",
        dest="blas_preload",
        action="store_const",
        const=False,
        help="do not re-execute with an optimized OpenBLAS (Linux)",
    )
    parser.add_argument("--engine", choices=["auto", "mlx", "llamacpp"], help="generation engine")
    parser.add_argument("--llama-server", type=Path, help="llama-server binary (llamacpp)")
    parser.add_argument("--gguf", type=Path, help="GGUF file for the llamacpp engine")
    parser.add_argument("--llamacpp-threads", type=int, help="llama-server threads")
    parser.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_const",
        const=False,
        help="do not serve Embed",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "models_dir",
        "default_model",
        "preload_models",
        "max_loaded_models",
        "memory_budget_mb",
        "idle_unload_s",
        "max_batch_size",
        "queue_capacity",
        "prefill_step_size",
        "dtype",
        "device",
        "blas_preload",
        "blas_threads",
        "embeddings",
        "engine",
        "llama_server",
        "gguf",
        "llamacpp_threads",
    )
    return {name: getattr(args, name) for name in names}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llmesh serve inference``; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    settings, _ = parse_service_args(InferenceSettings, build_parser(), args_list, extra=_overrides)
    if settings.blas_preload:
        from llmesh_inference.blas import reexec_with_openblas

        reexec_with_openblas(args_list, threads=settings.blas_threads)

    from llmesh.kernel.server import run_service
    from llmesh_inference.wiring import SERVICE_NAMES, wire

    code = run_service(
        settings,
        service="inference",
        service_names=list(SERVICE_NAMES),
        setup=lambda host: wire(host, settings),
    )
    release_mlx()
    return code


def release_mlx() -> None:
    """Free this (main) thread's MLX streams before the interpreter finalizes: their
    destructors would otherwise run after Python is gone and may abort the process
    (the MLX thread frees its own when it stops; issue 19 finding 6)."""
    if "mlx.core" not in sys.modules:
        return
    import contextlib

    import mlx.core as mx

    with contextlib.suppress(Exception):
        mx.synchronize()
    with contextlib.suppress(Exception):
        mx.clear_streams()
