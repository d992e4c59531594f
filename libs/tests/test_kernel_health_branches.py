"""The kernel's health reporter and its closing Watch, in process with a recording
servicer context: statuses per name, liveness by part, shutdown, and a watch ended by
the server with one last NOT_SERVING."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from llmesh.kernel.health import (
    LIVENESS,
    NOT_SERVING,
    READINESS,
    SERVING,
    ClosingHealthServicer,
    HealthReporter,
)

SERVICE = "llmesh.v1.GatewayService"


async def _status(reporter: HealthReporter, name: str) -> int:
    class Context:
        async def abort(self, code: grpc.StatusCode, message: str) -> None:
            raise AssertionError(f"{name}: {code} {message}")

    reply = await reporter.servicer.Check(health_pb2.HealthCheckRequest(service=name), Context())
    return int(reply.status)


async def _all(reporter: HealthReporter) -> dict[str, int]:
    return {n: await _status(reporter, n) for n in (LIVENESS, READINESS, "", SERVICE)}


async def test_readiness_follows_set_ready_and_liveness_every_part() -> None:
    reporter = HealthReporter([SERVICE])
    assert reporter.service_names == (SERVICE,)
    assert not reporter.ready and reporter.live and reporter.down == ()
    await reporter.publish()
    assert await _all(reporter) == {
        LIVENESS: SERVING,
        READINESS: NOT_SERVING,
        "": NOT_SERVING,
        SERVICE: NOT_SERVING,
    }
    await reporter.set_ready(True)
    assert reporter.ready
    assert set((await _all(reporter)).values()) == {SERVING}
    await reporter.set_live(False, part="engine")
    await reporter.set_live(False, part="audit")
    assert not reporter.live
    assert reporter.down == ("audit", "engine")
    assert not reporter.part_live("engine") and reporter.part_live("process")
    assert await _status(reporter, LIVENESS) == NOT_SERVING
    assert await _status(reporter, READINESS) == SERVING
    await reporter.set_live(True, part="engine")
    assert await _status(reporter, LIVENESS) == NOT_SERVING
    await reporter.set_live(True, part="audit")
    assert reporter.live and reporter.part_live("engine")
    assert await _status(reporter, LIVENESS) == SERVING
    await reporter.set_live(False)
    assert reporter.down == ("process",)


async def test_shutdown_is_not_serving_for_good() -> None:
    reporter = HealthReporter([SERVICE])
    await reporter.set_ready(True)
    await reporter.shutdown()
    assert not reporter.ready
    statuses = await _all(reporter)
    assert statuses[READINESS] == NOT_SERVING and statuses[SERVICE] == NOT_SERVING
    await reporter.set_ready(True)  # ignored once shutting down
    assert await _status(reporter, READINESS) == NOT_SERVING
    assert await _status(reporter, LIVENESS) == NOT_SERVING  # graceful shutdown: all down


class WatchContext:
    def __init__(self) -> None:
        self.written: list[int] = []
        self.wrote = asyncio.Event()

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        self.written.append(int(message.status))
        self.wrote.set()

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


async def test_a_closed_watch_ends_with_not_serving() -> None:
    servicer = ClosingHealthServicer()
    await servicer.set(READINESS, SERVING)
    context = WatchContext()
    watch = asyncio.create_task(
        servicer.Watch(health_pb2.HealthCheckRequest(service=READINESS), context)
    )
    await asyncio.wait_for(context.wrote.wait(), 30)
    assert context.written == [SERVING]
    servicer.close_watches()
    await asyncio.wait_for(watch, 30)
    assert context.written == [SERVING, NOT_SERVING]


async def test_a_watch_that_saw_not_serving_ends_without_repeating_it() -> None:
    servicer = ClosingHealthServicer()
    await servicer.set(READINESS, NOT_SERVING)
    context = WatchContext()
    watch = asyncio.create_task(
        servicer.Watch(health_pb2.HealthCheckRequest(service=READINESS), context)
    )
    await asyncio.wait_for(context.wrote.wait(), 30)
    servicer.close_watches()
    await asyncio.wait_for(watch, 30)
    assert context.written == [NOT_SERVING]


async def test_a_watch_opened_after_close_ends_at_once() -> None:
    reporter = HealthReporter([SERVICE])
    reporter.close_watches()
    context = WatchContext()
    await asyncio.wait_for(
        reporter.servicer.Watch(health_pb2.HealthCheckRequest(service=SERVICE), context), 30
    )
    assert context.written[-1] == NOT_SERVING


async def test_a_watch_that_fails_on_its_own_raises() -> None:
    servicer = ClosingHealthServicer()
    await servicer.set(READINESS, SERVING)

    class Broken(WatchContext):
        async def write(self, message: Any) -> None:
            raise RuntimeError("peer gone")

    with pytest.raises(RuntimeError, match="peer gone"):
        await asyncio.wait_for(
            servicer.Watch(health_pb2.HealthCheckRequest(service=READINESS), Broken()), 30
        )
