"""Model lifecycle on the MLX thread: load on demand for a request, unload when idle."""

from __future__ import annotations

import time

from llmesh.kernel.errors import LlmeshError, NotFound
from llmesh.kernel.logging import get_logger
from llmesh_inference.engine_core import EngineCore
from llmesh_inference.models import LoadedModel

log = get_logger("llmesh_inference.scheduler")


class ModelLifecycle(EngineCore):
    """Which models are loaded, decided on the MLX thread."""

    def _model_for(self, name: str) -> LoadedModel:
        """``name`` loaded (evicting idle, unpinned models if needed) and marked used."""
        model = self.store.get(name)
        if model is None:
            busy = {m.name for m in self.store.loaded() if m.requests} | self._pinned()
            model, _evicted, _ms = self.store.load(name, protect=busy)
        self.store.touch(model)
        return model

    def _unload_idle(self) -> None:
        """Unload models unused for ``idle_unload_s`` (never pinned ones)."""
        if self.idle_unload_s <= 0:
            return
        now = time.monotonic()
        pinned = self._pinned()
        for model in self.store.loaded():
            if (
                model.name not in pinned
                and model.requests == 0
                and now - model.last_used >= self.idle_unload_s
            ):
                try:
                    self.store.unload(model.name)
                except (NotFound, LlmeshError):
                    continue
                log.info("model %s unloaded after %.0fs idle", model.name, self.idle_unload_s)
