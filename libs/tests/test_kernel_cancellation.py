"""A client cancelling a server stream mid-way: the call is recorded CANCELLED and
nothing is logged as an error (no ``ContextVar ... created in a different Context``,
no INTERNAL), however grpc ends the handler's stream."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
import pytest

from llmesh.kernel.config import load_settings
from llmesh.kernel.server import ServiceHost


@pytest.fixture
async def echo_port(echo_pb: tuple[ModuleType, ModuleType]) -> AsyncIterator[int]:
    from kerneltest.echo_server import SERVICE, EchoSettings, setup_for

    host = ServiceHost(load_settings(EchoSettings, port=0), service_names=[SERVICE])
    setup = setup_for(*echo_pb)(host)
    await setup.__aenter__()
    port = await host.start()
    yield port
    await host.stop(0)
    await setup.__aexit__(None, None, None)


@pytest.mark.parametrize("interval_ms", [0, 2])
async def test_a_cancelled_stream_is_recorded_cancelled_without_errors(
    echo_pb: tuple[ModuleType, ModuleType],
    echo_port: int,
    interval_ms: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pb, pb_grpc = echo_pb
    rounds = 20
    with caplog.at_level(logging.INFO):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as channel:
            stub: Any = pb_grpc.EchoServiceStub(channel)
            for _ in range(rounds):
                call = stub.EchoStream(
                    pb.EchoStreamRequest(count=100, interval_ms=interval_ms), timeout=10
                )
                async for _message in call:
                    break  # one message, then walk away
                call.cancel()
            # A normal call afterwards still works (and flushes the server's work).
            reply = await stub.Echo(pb.EchoRequest(message="after"), timeout=5)
            assert reply.message == "after"

        async def all_logged() -> bool:
            gc.collect()  # abandoned handler streams are finalized here, if anywhere
            await asyncio.sleep(0.01)
            return len(_access(caplog)) >= rounds

        for _ in range(300):
            if await all_logged():
                break
    codes = [r.__dict__.get("code") for r in _access(caplog)]
    assert codes == ["CANCELLED"] * rounds
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [r.getMessage() for r in errors]


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "llmesh.access" and "/EchoStream" in r.getMessage()
    ]
