"""A service served in this process on a free port, the way ``llmesh serve`` runs it.

Every service package has ``wiring.py`` with ``SERVICE_NAMES`` and ``wire(host, settings)``;
this starts a :class:`~llmesh.kernel.server.ServiceHost` with it (set up, start, and on
exit stop without a grace period), so in-process tests and their multi-service meshes
start services one way (stopping, by default, without a grace period)::

    from llmesh_registry import wiring

    async with serving(RegistrySettings(port=0), wiring.SERVICE_NAMES,
                       lambda host: wiring.wire(host, settings)) as registry:
        ... registry.address ... registry.parts  # what wire() yielded
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Generic, TypeVar

from llmesh.kernel.config import ServiceSettings
from llmesh.kernel.guards import Guard
from llmesh.kernel.server import ServiceHost

T = TypeVar("T")


@dataclass(frozen=True)
class Served(Generic[T]):
    """A started host and what its wiring yielded."""

    host: ServiceHost
    parts: T

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.host.port}"


@contextlib.asynccontextmanager
async def serving(
    settings: ServiceSettings,
    service_names: Sequence[str],
    wire: Callable[[ServiceHost], AbstractAsyncContextManager[T]],
    *,
    guards: Sequence[Guard] = (),
    grace_s: float = 0.0,
) -> AsyncIterator[Served[T]]:
    """Wire, start and (on exit) stop one service on ``settings``' port (0: a free one),
    letting in-flight calls finish within ``grace_s``."""
    host = ServiceHost(settings, service_names=service_names, guards=guards)
    async with wire(host) as parts:
        await host.start()
        try:
            yield Served(host=host, parts=parts)
        finally:
            await host.stop(grace_s)
