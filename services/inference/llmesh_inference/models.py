"""Models on disk and in memory: discovery, loading, an LRU cache with a memory budget.

A :class:`ModelStore` is used from the MLX thread only (loading and unloading
run MLX). Read-only views for other threads come from :meth:`ModelStore.infos`,
which copies under a lock.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmesh.kernel.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    invalid,
)
from llmesh.kernel.logging import get_logger

# Models at least this large log their load progress (every quarter of the weights).
PROGRESS_MIN_BYTES = 64 * 2**20
log = get_logger(__name__)

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class ModelInfoData:
    """What ListModels and Stats say about one model."""

    name: str
    loaded: bool
    context_length: int
    parameters: int
    dtype: str
    memory_bytes: int


@dataclass
class LoadedModel:
    """A model in memory with its tokenizer and its continuous-batching generator."""

    name: str
    path: Path
    model: Any
    tokenizer: Any
    generator: Any
    context_length: int
    parameters: int
    dtype: str
    memory_bytes: int
    vocab_size: int
    has_chat_template: bool
    last_used: float = field(default_factory=time.monotonic)
    requests: int = 0
    """Requests queued for or running on this model."""
    draining: bool = False

    def info(self) -> ModelInfoData:
        return ModelInfoData(
            self.name, True, self.context_length, self.parameters, self.dtype, self.memory_bytes
        )


def _safetensors_parameters(path: Path) -> tuple[int, str]:
    """Parameter count and dtype from safetensors headers (no weights are read)."""
    total = 0
    dtypes: dict[str, int] = {}
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "U32": "uint32"}
    for file in sorted(path.glob("*.safetensors")):
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in meta["shape"]:
                count *= int(dim)
            total += count
            dtype = names.get(meta["dtype"], meta["dtype"].lower())
            dtypes[dtype] = dtypes.get(dtype, 0) + count
    dtype = max(dtypes, key=lambda k: dtypes[k]) if dtypes else "unknown"
    return total, dtype


def validate_name(name: str, field_name: str = "model") -> None:
    """Model names are folder names: no path separators, no dot-names."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or len(name) > 200:
        raise invalid(field_name, "must be the name of a folder in the model directory")


class ModelStore:
    """The model directory plus the LRU cache of loaded models."""

    def __init__(
        self,
        models_dir: Path,
        *,
        max_loaded: int,
        memory_budget_bytes: int | None,
        dtype: str,
        device: str,
        generator_kwargs: dict[str, Any],
    ) -> None:
        self.models_dir = models_dir
        self.max_loaded = max_loaded
        self.memory_budget_bytes = memory_budget_bytes
        self.dtype = dtype
        self.device = device
        self.generator_kwargs = generator_kwargs
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._disk_cache: dict[str, ModelInfoData] = {}

    # ----- disk -----------------------------------------------------------------

    def available(self) -> list[str]:
        """Names of the model folders on disk (a folder with config.json + safetensors)."""
        if not self.models_dir.is_dir():
            return []
        names = []
        for child in sorted(self.models_dir.iterdir()):
            if (child / "config.json").is_file() and any(child.glob("*.safetensors")):
                names.append(child.name)
        return names

    def exists(self, name: str) -> bool:
        validate_name(name)
        path = self.models_dir / name
        return (path / "config.json").is_file() and any(path.glob("*.safetensors"))

    def describe(self, name: str) -> ModelInfoData:
        """Info of a model on disk, loaded or not."""
        with self._lock:
            loaded = self._loaded.get(name)
            if loaded is not None:
                return loaded.info()
        cached = self._disk_cache.get(name)
        if cached is not None:
            return cached
        path = self.models_dir / name
        try:
            config = json.loads((path / "config.json").read_text())
            params, dtype = _safetensors_parameters(path)
        except (OSError, ValueError, KeyError, struct.error):
            info = ModelInfoData(name, False, 0, 0, "unknown", 0)
        else:
            ctx = int(config.get("max_position_embeddings") or config.get("n_ctx") or 0)
            info = ModelInfoData(name, False, ctx, params, dtype, 0)
        self._disk_cache[name] = info
        return info

    # ----- memory ---------------------------------------------------------------

    def infos(self) -> list[ModelInfoData]:
        """Loaded models, most recently used last (safe from any thread)."""
        with self._lock:
            return [m.info() for m in self._loaded.values()]

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def get(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._loaded.get(name)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def touch(self, model: LoadedModel) -> None:
        model.last_used = time.monotonic()
        with self._lock:
            if model.name in self._loaded:
                self._loaded.move_to_end(model.name)

    def _target_dtype(self, on_disk: str) -> str:
        if self.dtype != "auto":
            return self.dtype
        if self.device == "cpu":
            return "float32"
        return on_disk if on_disk in _DTYPE_BYTES else "float16"

    def _estimate_bytes(self, name: str) -> int:
        info = self.describe(name)
        target = self._target_dtype(info.dtype)
        path = self.models_dir / name
        on_disk = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        if info.dtype in _DTYPE_BYTES:
            return info.parameters * _DTYPE_BYTES.get(target, 4)
        return on_disk

    def _make_room(self, name: str, protect: set[str]) -> list[str]:
        """Evict least recently used idle models until ``name`` fits; returns the evicted."""
        need = self._estimate_bytes(name)
        if self.memory_budget_bytes is not None and need > self.memory_budget_bytes:
            raise ResourceExhausted(
                f"model {name} needs ~{need >> 20} MiB, more than the whole memory budget "
                f"({self.memory_budget_bytes >> 20} MiB)",
                reason="MODEL_TOO_LARGE",
                metadata={"model": name},
            )
        evicted: list[str] = []

        def fits() -> bool:
            models = self.loaded()
            if len(models) >= self.max_loaded:
                return False
            if self.memory_budget_bytes is None:
                return True
            return sum(m.memory_bytes for m in models) + need <= self.memory_budget_bytes

        while not fits():
            victims = [m for m in self.loaded() if m.requests == 0 and m.name not in protect]
            if not victims:
                raise ResourceExhausted(
                    f"cannot load {name}: every loaded model is busy or pinned",
                    reason="MODEL_CACHE_FULL",
                    metadata={"model": name},
                    retry_after_s=1.0,
                )
            victim = victims[0]
            self.unload(victim.name)
            evicted.append(victim.name)
        return evicted

    def load(
        self, name: str, *, protect: set[str] | None = None
    ) -> tuple[LoadedModel, list[str], float]:
        """Load ``name`` (a no-op when loaded); returns (model, evicted, milliseconds)."""
        validate_name(name)
        existing = self.get(name)
        if existing is not None:
            existing.draining = False
            self.touch(existing)
            return existing, [], 0.0
        if not self.exists(name):
            if (self.models_dir / name).is_dir():
                raise InvalidArgument(
                    f"{name} is not a model folder (needs config.json and *.safetensors)",
                    reason="NOT_A_MODEL",
                )
            raise NotFound(
                f"no model {name!r} in {self.models_dir}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name},
            )
        evicted = self._make_room(name, set(protect or ()))
        started = time.perf_counter()
        loaded = self._load_from_disk(name)
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self._loaded[name] = loaded
        log.info(
            "model %s loaded in %.0f ms (%d parameters, %s, %.1f MiB)",
            name,
            elapsed_ms,
            loaded.parameters,
            loaded.dtype,
            loaded.memory_bytes / 2**20,
            extra={"model": name, "load_ms": round(elapsed_ms, 1), "evicted": evicted},
        )
        return loaded, evicted, elapsed_ms

    def _load_from_disk(self, name: str) -> LoadedModel:
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.utils import load

        path = self.models_dir / name
        info = self.describe(name)
        log.info(
            "loading model %s from %s (%d parameters on disk as %s) ...",
            name,
            path,
            info.parameters,
            info.dtype,
            extra={"model": name},
        )
        try:
            loaded: Any = load(str(path), lazy=True)
            model, tokenizer = loaded[0], loaded[1]
        except (ValueError, KeyError, FileNotFoundError, json.JSONDecodeError) as exc:
            raise InvalidArgument(
                f"cannot load {name}: {exc}", reason="NOT_A_MODEL", metadata={"model": name}
            ) from None
        target = self._target_dtype(info.dtype)
        model.set_dtype(getattr(mx, target))
        params: Any = tree_flatten(model.parameters())
        memory = sum(int(v.nbytes) for _, v in params)
        self._materialize(name, params, memory)
        count = sum(int(v.size) for _, v in params)
        eos = sorted(int(t) for t in tokenizer.eos_token_ids)
        generator = BatchGenerator(model, stop_tokens=[[t] for t in eos], **self.generator_kwargs)
        config = json.loads((path / "config.json").read_text())
        ctx = int(config.get("max_position_embeddings") or info.context_length or 2048)
        vocab = int(config.get("vocab_size") or len(tokenizer.vocab))
        return LoadedModel(
            name=name,
            path=path,
            model=model,
            tokenizer=tokenizer,
            generator=generator,
            context_length=ctx,
            parameters=count,
            dtype=target,
            memory_bytes=memory,
            vocab_size=vocab,
            has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        )

    @staticmethod
    def _materialize(name: str, params: Any, total_bytes: int) -> None:
        """Read the weights into memory, logging progress every quarter for large models."""
        import mlx.core as mx

        report = total_bytes >= PROGRESS_MIN_BYTES
        done, next_mark = 0, 0.25
        for _, value in params:
            mx.eval(value)
            done += int(value.nbytes)
            if report and done >= next_mark * total_bytes:
                log.info(
                    "loading model %s: %d%% (%.0f of %.0f MiB)",
                    name,
                    round(100 * done / total_bytes),
                    done / 2**20,
                    total_bytes / 2**20,
                    extra={"model": name},
                )
                next_mark += 0.25

    def unload(self, name: str) -> int:
        """Drop ``name`` from memory; returns the bytes released."""
        import gc

        import mlx.core as mx

        with self._lock:
            model = self._loaded.pop(name, None)
        if model is None:
            raise NotFound(f"model {name!r} is not loaded", reason="MODEL_NOT_LOADED")
        if model.requests:
            with self._lock:
                self._loaded[name] = model
            raise FailedPrecondition(f"model {name} still has requests", reason="MODEL_BUSY")
        released = model.memory_bytes
        model.generator.close()
        del model
        gc.collect()
        mx.clear_cache()
        log.info("model %s unloaded (%.1f MiB released)", name, released / 2**20)
        return released
