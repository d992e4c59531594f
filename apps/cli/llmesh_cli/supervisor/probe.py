"""Readiness checks of the children: gRPC health (``readiness``) for the services, the
backing servers' own protocols for Redis (PING) and PostgreSQL (SELECT 1)."""

from __future__ import annotations

import asyncio

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


def backing_ready(probe: str, address: str, *, timeout_s: float = 1.0) -> bool:
    """Whether the Redis (``probe="redis"``) or PostgreSQL server at ``address`` answers."""
    host, _, port = address.rpartition(":")
    if probe == "redis":
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(
            host=host,
            port=int(port),
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # one probe is one try (the client retries 3x)
        )
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
    if probe == "http":  # the OpenAI door: GET /health answers 200 once the gateway is ready
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{address}/health", timeout=timeout_s) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False
    if probe == "postgres":
        import psycopg

        try:
            with psycopg.connect(
                host=host, port=int(port), user="postgres", dbname="postgres",
                connect_timeout=max(1, round(timeout_s)),
            ) as conn:  # fmt: skip
                conn.execute("SELECT 1")
        except (psycopg.Error, OSError):
            return False
        return True
    raise ValueError(f"unknown probe {probe!r}")


async def ready_state(probe: str, address: str, *, timeout_s: float = 1.0) -> str:
    """The child's readiness as ``llmesh status`` prints it, whatever it speaks."""
    if probe == "grpc":
        return await health_of(address, timeout_s=timeout_s)
    ok = await asyncio.to_thread(backing_ready, probe, address, timeout_s=timeout_s)
    return SERVING if ok else UNREACHABLE
