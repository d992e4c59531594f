"""The gateway's registry cache: the kernel's registry watch, with the gateway's metrics.

The gateway routes from this cache only (see :mod:`llmesh.kernel.registry_watch`).
"""

from __future__ import annotations

from typing import Any

import grpc

from llmesh.kernel.registry_watch import ChangeCallback, RegistryCache
from llmesh.kernel.registry_watch import RegistryWatcher as _Watcher

__all__ = ["ChangeCallback", "RegistryCache", "RegistryWatcher"]


class RegistryWatcher(_Watcher):
    """The kernel's watcher exporting ``gateway.registry.staleness_seconds`` and
    ``gateway.workers``."""

    def __init__(self, channel: grpc.aio.Channel, cache: RegistryCache, **kwargs: Any) -> None:
        kwargs.setdefault("metric_prefix", "gateway")
        super().__init__(channel, cache, **kwargs)
