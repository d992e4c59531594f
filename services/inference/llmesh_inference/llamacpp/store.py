"""GGUF models for the llama.cpp engine: one model per worker, served by its child.

A model folder holds a ``*.gguf`` file (an imported folder may keep its source GGUF
beside the mlx-lm files). The child process loads it at start; :class:`GgufStore`
says "loaded" exactly while the child is ready, and refuses to load anything else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmesh.kernel.errors import FailedPrecondition, NotFound
from llmesh_inference.models import LoadedModel, ModelInfoData, ModelStore, validate_name

_QUANT = re.compile(r"(?i)(?:^|[.\-_])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?=\.gguf$)")


def find_gguf(folder: Path) -> Path | None:
    """The GGUF of a model folder: a ``*.gguf`` file in it (the largest), else the source
    GGUF an import recorded in ``llmesh-model.json``, when that file is still there."""
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.gguf"), key=lambda f: f.stat().st_size, reverse=True)
    if files:
        return files[0]
    try:
        meta = json.loads((folder / "llmesh-model.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("source_format") != "gguf":
        return None
    source = Path(str(meta.get("source", "")))
    return source if source.suffix == ".gguf" and source.is_file() else None


def gguf_dtype(path: Path) -> str:
    """The weight type from the file name (``...Q4_1.gguf`` → ``q4_1``), else ``gguf``."""
    match = _QUANT.search(path.name)
    return match.group(1).lower() if match else "gguf"


class GgufStore(ModelStore):
    """The one model the llama.cpp child serves, as the servicer's store sees it."""

    def __init__(self, models_dir: Path, *, name: str, gguf: Path, context_length: int) -> None:
        super().__init__(
            models_dir,
            max_loaded=1,
            memory_budget_bytes=None,
            dtype="auto",
            device="cpu",
            generator_kwargs={},
        )
        self.name = name
        self.gguf = gguf
        self.context_length = context_length
        self._model = LoadedModel(
            name=name,
            path=gguf,
            model=None,
            tokenizer=None,
            generator=None,
            context_length=context_length,
            parameters=self._parameters(),
            dtype=gguf_dtype(gguf),
            memory_bytes=gguf.stat().st_size,
            vocab_size=0,
            has_chat_template=True,
        )

    def _parameters(self) -> int:
        """Parameter count from the mlx-lm files beside the GGUF, when there are any."""
        if self.exists_on_disk():
            return super().describe(self.name).parameters
        return 0

    def exists_on_disk(self) -> bool:
        return super().exists(self.name)

    # ----- what the child says -----------------------------------------------------

    def set_loaded(self, loaded: bool) -> None:
        """Called by the child: its model is in memory (ready) or gone (it exited)."""
        with self._lock:
            if loaded:
                self._loaded[self.name] = self._model
            else:
                self._loaded.pop(self.name, None)

    # ----- the store interface -------------------------------------------------------

    def available(self) -> list[str]:
        return [self.name]

    def exists(self, name: str) -> bool:
        validate_name(name)
        return name == self.name

    def describe(self, name: str) -> ModelInfoData:
        info = self._model.info()
        info.loaded = self.get(name) is not None
        return info

    def load(
        self, name: str, *, protect: set[str] | None = None
    ) -> tuple[LoadedModel, list[str], float]:
        validate_name(name)
        if name != self.name:
            raise NotFound(
                f"no model {name!r} on this worker: its llama.cpp engine serves {self.name} "
                "only (start another worker for another model)",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name},
            )
        model = self.get(name)
        if model is None:
            raise FailedPrecondition(
                f"model {name} is still loading in llama-server; retry when the worker is ready",
                reason="MODEL_LOADING",
            )
        return model, [], 0.0

    def unload(self, name: str) -> int:
        if name != self.name or self.get(name) is None:
            raise NotFound(f"model {name!r} is not loaded", reason="MODEL_NOT_LOADED")
        raise FailedPrecondition(
            f"the llama.cpp engine serves {name} for the life of the worker; "
            "stop the worker to release it",
            reason="ENGINE_ONE_MODEL",
        )
