"""gRPC health checks of the children (``readiness``)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"
UNREACHABLE = "UNREACHABLE"


async def health_of(address: str, *, service: str = "readiness", timeout_s: float = 1.0) -> str:
    """``SERVING``, ``NOT_SERVING``, ``UNKNOWN`` ... or ``UNREACHABLE``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "UNKNOWN"
            return UNREACHABLE
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
