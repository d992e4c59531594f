"""Domain metrics of the registry: workers by state (refreshed periodically)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.telemetry import meter
from llmesh.v1 import common_pb2
from llmesh_registry.backend import RegistryBackend


class WorkerGauge:
    """``llmesh_registry_workers{state=...}`` from the latest snapshot."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        meter("llmesh.registry").create_observable_gauge(
            "llmesh_registry_workers", callbacks=[self._observe], description="Workers by state"
        )

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(v, {"state": k}) for k, v in self._counts.items()]

    async def refresh(self, backend: RegistryBackend) -> None:
        snap = await backend.snapshot()
        counts = {name: 0 for name in common_pb2.WorkerState.keys()}  # noqa: SIM118
        counts.pop("WORKER_STATE_UNSPECIFIED", None)
        for worker in snap.workers:
            name = common_pb2.WorkerState.Name(worker.state)
            counts[name] = counts.get(name, 0) + 1
        self._counts = counts

    async def refresh_forever(self, backend: RegistryBackend, *, interval_s: float) -> None:
        while True:
            # Store down: keep the last figures; readiness reports the outage.
            with contextlib.suppress(LlmeshError):
                await self.refresh(backend)
            await asyncio.sleep(interval_s)
