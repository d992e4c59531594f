"""Typed settings of the inference worker (env prefix ``LLMESH_INFERENCE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmesh.kernel.config import ServiceSettings, service_settings_config

DEFAULT_PORT = 50054
DEFAULT_METRICS_PORT = 9464


class InferenceSettings(ServiceSettings):
    """Settings of ``llmesh serve inference``; every field is also an env variable."""

    model_config = service_settings_config("inference")

    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    method_deadlines: dict[str, float] = Field(default_factory=lambda: {"Generate": 300.0})
    """Deadline for calls that bring none; generations may run minutes."""
    models_dir: Path | None = None
    """Folder of mlx-lm model folders; default ``<data_dir>/models``."""
    default_model: str | None = None
    """Model used when a request names none; loaded at start (readiness waits for it).
    Unset: the only model on disk, if there is exactly one."""
    preload_models: list[str] = Field(default_factory=list)
    """Further models to load at start."""
    max_loaded_models: int = Field(default=2, ge=1, le=64)
    memory_budget_mb: int | None = Field(default=None, ge=1)
    """Upper bound on the weights of all loaded models; unset: no bound."""
    idle_unload_s: float = Field(default=900.0, ge=0)
    """Unload a model (not the default one) unused this long; 0 never."""
    max_batch_size: int = Field(default=16, ge=1, le=512)
    """Requests decoded together in one step (all models together)."""
    prefill_batch_size: int = Field(default=8, ge=1, le=512)
    prefill_step_size: int = Field(default=512, ge=16, le=65536)
    queue_capacity: int = Field(default=64, ge=0, le=100_000)
    """Requests waiting for a batch slot before RESOURCE_EXHAUSTED."""
    default_max_tokens: int = Field(default=256, ge=1, le=8192)
    default_temperature: float = Field(default=0.7, ge=0, le=2)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weight dtype; ``auto`` is float32 on the CPU (fastest there) and the model's own
    dtype on Metal/CUDA."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    blas_preload: bool = True
    """On Linux, re-execute once with an optimized OpenBLAS in ``LD_PRELOAD``."""
    blas_threads: int | None = Field(default=None, ge=1, le=1024)
    """Threads of the preloaded OpenBLAS (``OPENBLAS_NUM_THREADS``); unset: one per core.
    On a CPU shared with other busy processes, 1 is much faster (no spinning threads)."""
    stall_timeout_s: float = Field(default=30.0, gt=0)
    """Liveness turns NOT_SERVING when the MLX thread has work but makes no progress
    for this long."""
    decode_delay_ms: float = Field(default=0.0, ge=0, le=10_000)
    """Pause after every decode step, in ms (0: none). Throttles the MLX engine to
    reproduce slow hardware in drills, and in tests that need a stream to outlast a
    deadline whatever the machine's speed. Never set it in production."""
    embeddings: bool = True
    """Serve ``Embed`` (all-MiniLM-L6-v2, loaded on first use)."""
    embed_max_batch_tokens: int = Field(default=4096, ge=64, le=1_000_000)
    embed_max_texts: int = Field(default=256, ge=1, le=4096)
    engine: Literal["auto", "mlx", "llamacpp"] = "auto"
    """Generation engine. ``mlx``; ``llamacpp``: a supervised llama-server child serving
    the default model's GGUF (build it once: ``make llama-server``); ``auto``: llama.cpp
    on a CPU when the binary and a GGUF are there, else MLX. See docs/engines.md."""
    llama_server: Path | None = None
    """The llama-server binary; unset: the one ``make llama-server`` built, or PATH."""
    gguf: Path | None = None
    """GGUF file for the llama.cpp engine; unset: the ``*.gguf`` in the default model's
    folder."""
    llamacpp_threads: int | None = Field(default=None, ge=1, le=1024)
    """llama-server threads; unset: one per core."""
    llamacpp_ctx_size: int = Field(default=8192, ge=256, le=1_048_576)
    """Tokens of llama-server's KV cache, shared by all slots (``--kv-unified``)."""
    llamacpp_cache_prompt: bool = True
    """Reuse a slot's cached prompt prefix (chat turns); benchmarks turn it off."""
    llamacpp_start_timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("models_dir", "llama_server", "gguf")
    @classmethod
    def _expand_models(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _batches(self) -> InferenceSettings:
        self.prefill_batch_size = min(self.prefill_batch_size, self.max_batch_size)
        return self

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"
