"""``llmesh models``: import GGUF/Hugging Face models, write a tiny test model, list models."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_ADDRESS = "127.0.0.1:50054"


def _default_models_dir() -> Path:
    explicit = os.environ.get("LLMESH_INFERENCE_MODELS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("LLMESH_HOME", "~/.llmesh")).expanduser() / "models"


def register(subparsers: Any) -> None:
    """Add ``llmesh models import|init-tiny|list``."""
    parser = subparsers.add_parser("models", help="manage local models")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    init = sub.add_parser(
        "init-tiny",
        help="write a small deterministic Llama model (no download)",
        description="Write a deterministic Llama-architecture mlx-lm model with a byte-level "
        "BPE tokenizer trained locally, as DIR/NAME. Sizes: test (~0.1M parameters, for "
        "tests), small (~4M), bench (~34M, for benchmarks).",
    )
    init.add_argument(
        "dir", nargs="?", type=Path, help="models directory (default ~/.llmesh/models)"
    )
    init.add_argument("--size", choices=["test", "small", "bench"], default="test")
    init.add_argument("--name", help="folder name (default tiny-llama-<size>)")
    init.add_argument("--seed", type=int, default=0, help="weight seed")
    init.set_defaults(func=_init_tiny)

    importing = sub.add_parser(
        "import",
        help="make an mlx-lm model folder from a GGUF file or a Hugging Face folder",
        description="Convert SOURCE (a GGUF file: Llama/SmolLM, Mistral, Qwen2; F32, F16, "
        "Q4_0, Q4_1, Q8_0 read as they are, K-quants dequantized; or a Hugging Face folder "
        "with config.json, *.safetensors and tokenizer.json) into MODELS_DIR/NAME, then "
        "generate a few greedy tokens from it as a smoke check.",
    )
    importing.add_argument("source", type=Path, help="a .gguf file or a model folder")
    importing.add_argument("--name", help="folder name (default: from the source's name)")
    importing.add_argument("--models-dir", type=Path, help="default ~/.llmesh/models")
    importing.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16", "quantized"],
        default="auto",
        help="stored weights: auto = float32 on a CPU (fastest there), quantized (GGUF "
        "Q4/Q8 kept as MLX 4/8-bit) on Metal/CUDA",
    )
    importing.add_argument("--force", action="store_true", help="replace an existing folder")
    importing.add_argument("--no-smoke", action="store_true", help="skip the smoke generation")
    importing.set_defaults(func=_import)

    listing = sub.add_parser(
        "list",
        help="models on disk, which a worker has loaded, and the BLAS MLX uses",
    )
    listing.add_argument("--models-dir", type=Path, help="default ~/.llmesh/models")
    listing.add_argument(
        "--address",
        help=f"ask the worker at host:port which models are loaded (e.g. {DEFAULT_ADDRESS})",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)


def _init_tiny(args: argparse.Namespace) -> int:
    from llmesh_inference.tiny import DEFAULT_NAMES, init_tiny, parameter_count

    models_dir = args.dir or _default_models_dir()
    name = args.name or DEFAULT_NAMES[args.size]
    path = init_tiny(models_dir / name, size=args.size, seed=args.seed)
    print(f"wrote {path} ({parameter_count(args.size):,} parameters, float32)")
    print(f"serve it: llmesh serve inference --models-dir {models_dir} --default-model {name}")
    return 0


def _import(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    from llmesh_cli.supervisor.models import import_with_progress
    from llmesh_inference.importing import ModelImportError

    models_dir = args.models_dir or _default_models_dir()
    console = Console(highlight=False)
    try:
        result = import_with_progress(
            args.source,
            models_dir,
            console=console,
            name=args.name,
            dtype=args.dtype,
            overwrite=args.force,
            smoke=not args.no_smoke,
        )
    except (ModelImportError, OSError) as exc:
        print(f"llmesh models import: {exc}", file=sys.stderr)
        return 2
    record = result.record
    console.print(
        f"imported {result.path} in {result.seconds:.1f} s: {record['architecture']}, "
        f"{record['parameters']:,} parameters, {record['dtype']}, "
        f"context {record['context_length']}"
    )
    if result.smoke_text is not None:
        console.print(f"smoke check (greedy): {result.smoke_text!r}", markup=False)
    console.print(
        f"serve it: llmesh serve inference --models-dir {models_dir} "
        f"--default-model {result.path.name}"
    )
    return 0


def _worker_models(address: str) -> tuple[dict[str, Any], str | None]:
    import grpc

    from llmesh.v1 import inference_pb2, inference_pb2_grpc

    try:
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            stats = stub.Stats(inference_pb2.StatsRequest(), timeout=5)
    except grpc.RpcError as exc:
        return {}, f"worker at {address} did not answer: {exc.code().name}"
    loaded = {m.name: m for m in stats.loaded_models}
    return {"loaded": loaded, "blas": stats.blas, "device": stats.device}, None


def _blas_report() -> dict[str, str]:
    from llmesh_inference.blas import find_openblas_preload

    preload = find_openblas_preload()
    return {
        "worker_blas": "openblas (preloaded by `llmesh serve inference`)"
        if preload
        else "reference (no optimized OpenBLAS found: install cmeel-openblas or "
        "Debian's libopenblas0-pthread)",
        "openblas": str(preload.library) if preload else "",
    }


def _list(args: argparse.Namespace) -> int:
    from llmesh_inference.importing import read_record
    from llmesh_inference.models import ModelStore

    models_dir = args.models_dir or _default_models_dir()
    store = ModelStore(
        models_dir,
        max_loaded=1,
        memory_budget_bytes=None,
        dtype="auto",
        device="cpu",
        generator_kwargs={},
    )
    worker: dict[str, Any] = {}
    problem = None
    if args.address:
        worker, problem = _worker_models(args.address)
    loaded = worker.get("loaded", {})
    rows: list[dict[str, Any]] = []
    for name in store.available():
        info = store.describe(name)
        record = read_record(models_dir / name)
        rows.append(
            {
                "name": name,
                "source": record.get("source", ""),
                "architecture": record.get("architecture", ""),
                "parameters": info.parameters,
                "context_length": info.context_length,
                "dtype_on_disk": info.dtype,
                "loaded": name in loaded,
                "memory_bytes": int(loaded[name].memory_bytes) if name in loaded else 0,
            }
        )
    blas = _blas_report()
    if worker:
        blas["running_worker_blas"] = worker.get("blas", "")
    if args.json:
        print(json.dumps({"models_dir": str(models_dir), "models": rows, "blas": blas}, indent=2))
        return 0
    print(f"models in {models_dir}:")
    if not rows:
        print("  (none: `llmesh models init-tiny` writes a test model)")
    for row in rows:
        state = f"loaded, {row['memory_bytes'] / 2**20:.1f} MiB" if row["loaded"] else "on disk"
        print(
            f"  {row['name']:<32} {row['parameters']:>12,} params  "
            f"ctx {row['context_length']:<6} {row['dtype_on_disk']:<8} {state}"
        )
        if row["source"]:
            print(f"  {'':<32} {row['architecture']} from {row['source']}")
    if problem:
        print(f"  ({problem})")
    print(f"BLAS for workers started here: {blas['worker_blas']}")
    if "running_worker_blas" in blas:
        print(f"BLAS of the worker at {args.address}: {blas['running_worker_blas']}")
    return 0
