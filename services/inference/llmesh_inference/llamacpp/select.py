"""Which engine a worker runs: ``mlx``, ``llamacpp``, or ``auto``.

``auto`` picks llama.cpp on a CPU when the binary is there and the default model has
a GGUF file (MLX is several times slower on Linux CPUs on real models; see
docs/performance.md), and MLX otherwise (Metal, CUDA, no binary, or no GGUF).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmesh.kernel.errors import FailedPrecondition

MLX = "mlx"
LLAMA_CPP = "llama.cpp"


@dataclass(frozen=True)
class EngineChoice:
    """The engine chosen and why (logged at start)."""

    engine: str
    reason: str
    binary: Path | None = None
    gguf: Path | None = None


def choose_engine(
    setting: str,
    *,
    device: str,
    binary: Path | None,
    gguf: Path | None,
    default_model: str | None,
) -> EngineChoice:
    """Resolve the ``engine`` setting; an explicit ``llamacpp`` that cannot run is an error."""
    if setting == "mlx":
        return EngineChoice(MLX, "engine = mlx")
    missing = []
    if binary is None:
        missing.append("no llama-server binary (build it once with `make llama-server`)")
    if default_model is None:
        missing.append("no default model (the llama.cpp engine serves one model)")
    elif gguf is None:
        missing.append(f"model {default_model} has no .gguf file in its folder")
    if setting == "llamacpp":
        if missing:
            raise FailedPrecondition(
                "engine = llamacpp cannot start: " + "; ".join(missing),
                reason="ENGINE_UNAVAILABLE",
            )
        return EngineChoice(LLAMA_CPP, "engine = llamacpp", binary, gguf)
    if device != "cpu":
        return EngineChoice(MLX, f"auto: MLX on the {device}")
    if missing:
        return EngineChoice(MLX, "auto: MLX because " + "; ".join(missing))
    return EngineChoice(LLAMA_CPP, "auto: llama.cpp on the CPU", binary, gguf)
