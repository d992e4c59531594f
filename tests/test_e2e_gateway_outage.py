"""Gateway e2e (shared mesh, see e2etest.gateway_mesh): the registry killed for good, then
a worker killed and restarted. These tests break the mesh: this module must stay the last
user of the session's ``gateway_mesh`` (pytest runs tests/ files in name order)."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from e2etest.gateway_mesh import Mesh, bearer, greedy
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.testing.polling import wait_until
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_registry_down_routing_goes_on_from_the_last_snapshot(gateway_mesh: Mesh) -> None:
    """Stops the registry for good: the remaining tests route from the cached snapshot."""
    registry = next(p for p in gateway_mesh.procs if p.name == "registry")
    registry.stop(signal.SIGKILL)  # gone without a goodbye
    wait_until(
        lambda: gateway_mesh.metric("gateway_registry_staleness_seconds") > 0,
        timeout_s=10,
        what="staleness to grow",
    )
    async with grpc.aio.insecure_channel(gateway_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        reply = await stub.Generate(
            gateway_pb2.GenerateRequest(
                input=common_pb2.GenerationInput(prompt="still there?", sampling=greedy(1))
            ),
            metadata=bearer(gateway_mesh.keys["alice"]),
        )
        assert reply.worker_id in gateway_mesh.workers
        listed = await gateway_pb2_grpc.AdminServiceStub(channel).ListWorkers(
            gateway_pb2.ListWorkersRequest(), metadata=bearer(gateway_mesh.keys["admin"])
        )
        assert listed.staleness_seconds > 0 and len(listed.workers) == 2
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="readiness")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_failover_and_breaker_when_a_worker_dies(gateway_mesh: Mesh) -> None:
    """Runs last: kills w0 before a request reaches it, then restarts it."""
    async with grpc.aio.insecure_channel(gateway_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        meta = bearer(gateway_mesh.keys["admin"])
        # Find session ids whose affinity sends them to w0.
        to_w0: list[str] = []
        for i in range(60):
            reply = await stub.Generate(
                gateway_pb2.GenerateRequest(
                    input=common_pb2.GenerationInput(prompt="hi", sampling=greedy(1)),
                    session_id=f"s{i}",
                ),
                metadata=meta,
            )
            if reply.worker_id == "w0":
                to_w0.append(f"s{i}")
            if len(to_w0) >= 8:
                break
        assert len(to_w0) >= 8
        failovers_before = gateway_mesh.metric("gateway_failovers_total")

        gateway_mesh.workers["w0"].stop(signal.SIGKILL)
        for session_id in to_w0:
            chunks = [
                c
                async for c in stub.GenerateStream(
                    gateway_pb2.GenerateStreamRequest(
                        input=common_pb2.GenerationInput(prompt="hi", sampling=greedy(2)),
                        session_id=session_id,
                    ),
                    metadata=meta,
                )
            ]
            assert chunks[0].start.worker_id == "w1"  # failed over before the first token
            assert chunks[-1].done.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
        # The breaker opened after 3 consecutive failures: w0 is no longer tried.
        assert gateway_mesh.metric("gateway_failovers_total") - failovers_before == 3

        # The worker comes back on the same address; after the cooldown a probe closes it.
        gateway_mesh.workers["w0"].start()
        gateway_mesh.workers["w0"].mesh.wait_ready("inference")

        async def served_by_w0() -> bool:
            reply = await stub.Generate(
                gateway_pb2.GenerateRequest(
                    input=common_pb2.GenerationInput(prompt="hi", sampling=greedy(1)),
                    session_id=to_w0[0],
                ),
                metadata=meta,
            )
            return reply.worker_id == "w0"

        deadline = time.monotonic() + 15
        while not await served_by_w0():
            assert time.monotonic() < deadline, "the breaker never closed"
            await asyncio.sleep(0.2)
