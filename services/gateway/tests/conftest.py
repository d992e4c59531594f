"""Fixtures for the gateway's service tests: a real gateway and a real registry in-process,
contract-level inference workers with fault injection, and a small in-memory memory service
(the fakes are in ``gatewaytest/fakes.py``).
(End-to-end tests against every real service live in ``tests/test_e2e_*.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmesh.testing.inprocess import serving
from llmesh.testing.rpc import error_details
from llmesh.v1 import (
    common_pb2,
    gateway_pb2_grpc,
    inference_pb2_grpc,
    memory_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from llmesh_gateway.auth import AuthGuard
from llmesh_gateway.settings import GatewaySettings
from llmesh_gateway.wiring import SERVICE_NAMES, Gateway, wire

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # makes the gatewaytest package importable

from gatewaytest.fakes import FakeMemory, FakeWorker  # noqa: E402


@dataclass
class Mesh:
    """A running gateway with its registry, workers and memory."""

    gateway: Gateway
    address: str
    registry_address: str
    workers: dict[str, FakeWorker]
    worker_servers: dict[str, grpc.aio.Server]
    memory: FakeMemory
    admin_key: str
    user_key: str
    other_tenant_key: str
    channel: grpc.aio.Channel

    def stub(self) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
        return gateway_pb2_grpc.GatewayServiceStub(self.channel)  # type: ignore[return-value]

    def admin(self) -> gateway_pb2_grpc.AdminServiceAsyncStub:
        return gateway_pb2_grpc.AdminServiceStub(self.channel)  # type: ignore[return-value]

    @staticmethod
    def auth(key: str) -> tuple[tuple[str, str], ...]:
        return bearer(key)

    @staticmethod
    def details(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
        return error_details(exc)

    @staticmethod
    async def failure(awaitable: Any) -> grpc.aio.AioRpcError:
        """The error ``awaitable`` fails with (the test fails if it succeeds)."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await awaitable
        return info.value


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _serve(servicer_adder: Callable[[grpc.aio.Server], None]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    servicer_adder(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


# What the fake workers report about their models at registration (ListModels figures).
FIGURES = [
    common_pb2.ModelInfo(name="tiny", context_length=2048, parameters=1_000_000, dtype="float32"),
    common_pb2.ModelInfo(name="big", context_length=4096, parameters=9_000_000, dtype="float16"),
    common_pb2.ModelInfo(name="fake-embed", context_length=256, dtype="float32", embedding=True),
]


async def register_worker(
    registry_address: str, worker: FakeWorker, address: str, **fields: Any
) -> None:
    async with grpc.aio.insecure_channel(registry_address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await stub.Register(
            registry_pb2.RegisterRequest(
                worker=common_pb2.WorkerInfo(
                    worker_id=worker.worker_id,
                    address=address,
                    models_loaded=worker.loaded,
                    models_available=["tiny", "big"],
                    capacity=4,
                    state=common_pb2.WORKER_STATE_READY,
                    models=FIGURES,
                    **fields,
                )
            )
        )


def _adder(fake: FakeWorker) -> Callable[[grpc.aio.Server], None]:
    return lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(fake, server)


@contextlib.asynccontextmanager
async def start_mesh(tmp_path: Path, *, workers: int = 2, **settings: Any) -> AsyncIterator[Mesh]:
    from llmesh_registry import wiring as registry_wiring
    from llmesh_registry.settings import RegistrySettings

    registry_settings = RegistrySettings(port=0, lease_ttl_ms=600_000, evict_after_ms=600_000)
    async with contextlib.AsyncExitStack() as stack:
        registry = await stack.enter_async_context(
            serving(
                registry_settings,
                registry_wiring.SERVICE_NAMES,
                lambda host: registry_wiring.wire(host, registry_settings),
            )
        )
        registry_address = registry.address

        memory = FakeMemory()
        memory_server, memory_address = await _serve(
            lambda s: memory_pb2_grpc.add_MemoryServiceServicer_to_server(memory, s)
        )
        stack.push_async_callback(memory_server.stop, 0)

        fakes: dict[str, FakeWorker] = {}
        servers: dict[str, grpc.aio.Server] = {}
        for i in range(workers):
            fake = FakeWorker(f"w{i}")
            server, address = await _serve(_adder(fake))
            stack.push_async_callback(server.stop, 0)
            fakes[fake.worker_id] = fake
            servers[fake.worker_id] = server
            await register_worker(registry_address, fake, address)

        settings.setdefault(
            "rate_limit", {"generations_per_minute": 6000, "requests_per_minute": 6000}
        )
        gw_settings = GatewaySettings(
            port=0,
            data_dir=tmp_path,
            registry_address=registry_address,
            memory_address=memory_address,
            **settings,
        )
        auth = AuthGuard()
        served = await stack.enter_async_context(
            serving(
                gw_settings,
                SERVICE_NAMES,
                lambda host: wire(host, gw_settings, auth),
                guards=[auth],
            )
        )
        gateway, port = served.parts, served.host.port
        deadline = time.monotonic() + 10
        while len(gateway.cache.workers) < workers:
            assert time.monotonic() < deadline, "gateway never saw the workers"
            await asyncio.sleep(0.01)
        admin = await gateway.keys.create(name="admin", role="admin", tenant="ops")
        user = await gateway.keys.create(name="user", role="user", tenant="acme")
        other = await gateway.keys.create(name="other", role="user", tenant="globex")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close, None)
        yield Mesh(
            gateway=gateway,
            address=f"127.0.0.1:{port}",
            registry_address=registry_address,
            workers=fakes,
            worker_servers=servers,
            memory=memory,
            admin_key=admin.api_key,
            user_key=user.api_key,
            other_tenant_key=other.api_key,
            channel=channel,
        )


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with start_mesh(tmp_path) as running:
        yield running


@pytest.fixture
def mesh_factory(tmp_path: Path) -> Callable[..., Any]:
    return lambda **kw: start_mesh(tmp_path, **kw)
