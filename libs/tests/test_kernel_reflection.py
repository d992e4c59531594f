"""Server reflection answers under ``grpc.reflection.v1`` (what current grpcurl asks
first) and ``grpc.reflection.v1alpha``, through raw calls on a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from llmesh.kernel.config import load_settings
from llmesh.kernel.server import ServiceHost

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture
async def host(echo_pb: tuple[ModuleType, ModuleType]) -> AsyncIterator[ServiceHost]:
    from kerneltest.echo_server import SERVICE, EchoSettings, setup_for

    host = ServiceHost(load_settings(EchoSettings), service_names=[SERVICE])
    await setup_for(*echo_pb)(host).__aenter__()
    await host.start()
    yield host
    await host.stop(0)


async def _ask(
    port: int, method: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: Any = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(iter(requests), timeout=5)
        return [response async for response in call]


def _files(response: reflection_pb2.ServerReflectionResponse) -> list[str]:
    names = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        names.append(proto.name)
    return names


@pytest.mark.parametrize("method", [V1, V1ALPHA])
async def test_reflection_lists_and_describes_services(host: ServiceHost, method: str) -> None:
    from kerneltest.echo_server import SERVICE

    listed, described = await _ask(
        _port(host),
        method,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert not described.HasField("error_response")
    assert _files(described)


async def test_v1_describes_the_v1_reflection_service_itself(host: ServiceHost) -> None:
    (reply,) = await _ask(
        _port(host),
        V1,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
    )
    assert not reply.HasField("error_response")
    assert "grpc/reflection/v1/reflection.proto" in _files(reply)


def _port(host: ServiceHost) -> int:
    assert host.port is not None
    return host.port
