"""The plaintext health-only port (for kubelet's gRPC probes) and ``allow_plaintext``."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.config import ConfigError, load_settings
from llmesh.kernel.server import ServiceHost
from llmesh.testing.certs import CertPaths, write_test_pki
from llmesh.testing.servers import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return write_test_pki(tmp_path_factory.mktemp("pki"))


async def _check(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


async def _started(echo_pb: tuple[ModuleType, ModuleType], **settings: Any) -> ServiceHost:
    from kerneltest.echo_server import SERVICE, EchoSettings, setup_for

    host = ServiceHost(load_settings(EchoSettings, **settings), service_names=[SERVICE])
    await setup_for(*echo_pb)(host).__aenter__()
    await host.start()
    return host


async def test_mtls_server_answers_plaintext_probes_on_its_health_port_only(
    echo_pb: tuple[ModuleType, ModuleType], pki: CertPaths
) -> None:
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    host = await _started(
        echo_pb,
        host="127.0.0.1",
        health_port=free_port(),
        tls={**tls, "client_ca_file": str(pki.ca)},
    )
    try:
        assert host.health_port is not None
        for name in ("liveness", "readiness", "", "kerneltest.v1.EchoService"):
            assert await _check(host.health_port, name) == SERVING
        # The health port serves nothing else: no echo, no reflection.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.health_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await (
                    echo_pb[1]
                    .EchoServiceStub(channel)
                    .Echo(echo_pb[0].EchoRequest(message="x"), timeout=5)
                )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The main port still refuses plaintext.
        assert host.port is not None
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _check(host.port, "readiness")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Shutdown flips the probe port's answers too (kubelet sees the drain).
        await host.health.shutdown()
        assert await _check(host.health_port, "readiness") == NOT_SERVING
    finally:
        await host.stop(0)


async def test_health_port_in_use_is_a_config_error(
    echo_pb: tuple[ModuleType, ModuleType],
) -> None:
    first = await _started(echo_pb, host="127.0.0.1", health_port=free_port())
    try:
        with pytest.raises(ConfigError, match="health_port"):
            await _started(echo_pb, host="127.0.0.1", health_port=first.health_port)
    finally:
        await first.stop(0)


async def test_non_loopback_plaintext_needs_allow_plaintext(
    echo_pb: tuple[ModuleType, ModuleType],
) -> None:
    with pytest.raises(ConfigError, match="allow_plaintext"):
        await _started(echo_pb, host="0.0.0.0")
    host = await _started(echo_pb, host="0.0.0.0", allow_plaintext=True)
    try:
        assert host.port is not None
        assert await _check(host.port, "readiness") == SERVING
    finally:
        await host.stop(0)
