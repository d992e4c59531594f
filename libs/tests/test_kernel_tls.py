"""TLS and mTLS through the kernel's server bootstrap and channel factory."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import grpc
import pytest

from llmesh.kernel.channels import create_channel
from llmesh.kernel.config import ClientTlsSettings, load_settings
from llmesh.kernel.server import ServiceHost
from llmesh.testing.certs import CertPaths, write_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return write_test_pki(tmp_path_factory.mktemp("pki"))


async def _mtls_host(echo_pb: tuple[ModuleType, ModuleType], pki: CertPaths, host: str) -> Any:
    from kerneltest.echo_server import SERVICE, EchoSettings, setup_for

    settings = load_settings(
        EchoSettings,
        host=host,
        tls={
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            "client_ca_file": str(pki.ca),
        },
    )
    server = ServiceHost(settings, service_names=[SERVICE])
    await setup_for(*echo_pb)(server).__aenter__()
    await server.start()
    return server


async def test_mtls_call_succeeds_with_a_client_certificate(
    echo_pb: tuple[ModuleType, ModuleType], pki: CertPaths
) -> None:
    # A non-loopback bind is allowed once TLS is configured.
    server = await _mtls_host(echo_pb, pki, "0.0.0.0")
    try:
        tls = ClientTlsSettings(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        async with create_channel(f"localhost:{server.port}", tls=tls) as channel:
            reply = (
                await echo_pb[1]
                .EchoServiceStub(channel)
                .Echo(echo_pb[0].EchoRequest(message="over mtls"), timeout=10)
            )
        assert reply.message == "over mtls"
    finally:
        await server.stop(0)


async def test_mtls_refuses_clients_without_a_certificate(
    echo_pb: tuple[ModuleType, ModuleType], pki: CertPaths
) -> None:
    server = await _mtls_host(echo_pb, pki, "127.0.0.1")
    try:
        no_cert = ClientTlsSettings(ca_file=pki.ca)
        async with create_channel(f"localhost:{server.port}", tls=no_cert) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await (
                    echo_pb[1]
                    .EchoServiceStub(channel)
                    .Echo(echo_pb[0].EchoRequest(message="x"), timeout=5)
                )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        async with create_channel(f"localhost:{server.port}") as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await (
                    echo_pb[1]
                    .EchoServiceStub(plaintext)
                    .Echo(echo_pb[0].EchoRequest(message="x"), timeout=5)
                )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
