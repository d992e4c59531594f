"""Wiring: the inference worker and its servicer on a ``ServiceHost`` (used by ``app.py``
and tests).

Every service package has a ``wiring.py`` with ``SERVICE_NAMES`` and ``wire(host, settings)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from llmesh.kernel.server import ServiceHost
from llmesh.v1 import inference_pb2_grpc
from llmesh_inference.servicer import InferenceServicer
from llmesh_inference.settings import InferenceSettings
from llmesh_inference.worker import InferenceWorker

SERVICE_NAMES = ("llmesh.v1.InferenceService",)


@asynccontextmanager
async def wire(host: ServiceHost, settings: InferenceSettings) -> AsyncIterator[InferenceWorker]:
    """Register the servicer on ``host`` and own the worker for the server's life."""
    worker = InferenceWorker(settings, health=host.health)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(
        InferenceServicer(worker), host.server
    )
    await worker.start()
    host.drain = worker.drain  # SIGTERM: DRAINING, finish in-flight work, then stop
    try:
        yield worker
    finally:
        await worker.stop()
