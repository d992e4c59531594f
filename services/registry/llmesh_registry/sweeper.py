"""Background tasks of a registry replica: lease sweeping and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh_registry.backend import RegistryBackend

log = get_logger(__name__)


async def sweep_forever(backend: RegistryBackend, *, interval_s: float) -> None:
    """Mark lapsed leases UNHEALTHY and evict long-lapsed workers, every ``interval_s``."""
    while True:
        try:
            await backend.sweep()
        except LlmeshError as exc:
            log.warning("lease sweep failed: %s", exc)
        await asyncio.sleep(interval_s)


async def watch_readiness(
    backend: RegistryBackend,
    set_ready: Callable[[bool], Awaitable[None]],
    *,
    interval_s: float,
) -> None:
    """Readiness follows whether the backend answers."""
    ready: bool | None = None
    while True:
        ok = await backend.ping()
        if ok != ready:
            ready = ok
            if not ok:
                log.warning("registry store unreachable: readiness NOT_SERVING")
            await set_ready(ok)
        await asyncio.sleep(interval_s)
