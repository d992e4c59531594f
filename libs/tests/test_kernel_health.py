"""The health servicer's ``Watch`` streams: they follow status changes, end cleanly
when the server shuts down, and leave nothing behind when the client goes away."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.health import READINESS, HealthReporter
from llmesh.testing.polling import await_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _serve(reporter: HealthReporter) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(reporter.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _until(predicate: Callable[[], bool]) -> None:
    async def check() -> bool:
        return predicate()

    await await_until(check, timeout_s=10, what="watcher bookkeeping")


async def test_watch_follows_changes_and_ends_ok_after_shutdown() -> None:
    reporter = HealthReporter(["x.v1.Svc"])
    await reporter.publish()
    server, port = await _serve(reporter)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=READINESS), timeout=30
            )
            assert (await watch.read()).status == NOT_SERVING  # not ready yet
            await reporter.set_ready(True)
            assert (await watch.read()).status == SERVING
            await reporter.shutdown()
            reporter.close_watches()
            statuses = []
            while (reply := await watch.read()) is not grpc.aio.EOF:
                statuses.append(reply.status)
            # Ends on NOT_SERVING (possibly sent twice), then OK instead of a cancel.
            assert statuses and set(statuses) == {NOT_SERVING}
            assert await watch.code() == grpc.StatusCode.OK
            # A watch opened after the close answers the final status and ends.
            late = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=READINESS), timeout=30
            )
            assert [r.status async for r in late] in ([NOT_SERVING], [NOT_SERVING] * 2)
            assert await late.code() == grpc.StatusCode.OK
    finally:
        await server.stop(0)


async def test_client_cancel_leaves_no_watcher_behind() -> None:
    reporter = HealthReporter(["x.v1.Svc"])
    await reporter.publish()
    server, port = await _serve(reporter)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=READINESS), timeout=30
            )
            await watch.read()
            watchers = reporter.servicer._watcher_count_by_service
            await _until(lambda: watchers.get(READINESS) == 1)
            watch.cancel()
            await _until(lambda: READINESS not in watchers)
        # The reporter still works for the next watcher.
        await reporter.set_ready(True)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=READINESS), timeout=10
            )
            assert check.status == SERVING
    finally:
        await server.stop(0)
