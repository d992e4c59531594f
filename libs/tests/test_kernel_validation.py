"""Request decoding and buf.validate checks in the kernel interceptor, through real servers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from buf.validate import validate_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmesh.kernel.config import load_settings
from llmesh.kernel.server import ServiceHost
from llmesh.kernel.validation import MALFORMED_REQUEST, field_path
from llmesh.testing.polling import wait_until
from llmesh.testing.servers import free_port

ECHO_SERVER = Path(__file__).parent / "kerneltest" / "echo_server.py"
ECHO = "/kerneltest.v1.EchoService/Echo"
ECHO_STREAM = "/kerneltest.v1.EchoService/EchoStream"


@pytest.fixture
async def echo(echo_pb: tuple[ModuleType, ModuleType]) -> AsyncIterator[ServiceHost]:
    from kerneltest.echo_server import SERVICE, EchoSettings, setup_for

    host = ServiceHost(load_settings(EchoSettings), service_names=[SERVICE])
    await setup_for(*echo_pb)(host).__aenter__()
    await host.start()
    yield host
    await host.stop(0)


def _details(err: grpc.aio.AioRpcError) -> tuple[Any, Any]:
    status = rpc_status.from_call(err)
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
    return info, bad


async def _raw_unary(port: int, method: str, payload: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(payload, timeout=5)
    return err.value


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("0aff"),  # field 1 (string) with a length that runs past the end
        bytes.fromhex("0a01ff"),  # field 1 (string) holding the byte 0xff: not UTF-8
        bytes.fromhex("9e"),  # a truncated tag
        b"\x10" + b"\xff" * 11,  # a varint longer than ten bytes
    ],
)
async def test_malformed_bytes_are_invalid_argument_malformed_request(
    echo: ServiceHost, payload: bytes
) -> None:
    err = await _raw_unary(echo.port or 0, ECHO, payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (err.details() or "")
    info, _ = _details(err)
    assert info.reason == MALFORMED_REQUEST
    assert info.metadata["method"] == ECHO


async def test_malformed_bytes_on_a_streaming_method(echo: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
        call = channel.unary_stream(
            ECHO_STREAM, request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call(bytes.fromhex("08"), timeout=5):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(err.value)[0].reason == MALFORMED_REQUEST


async def test_contract_rule_is_invalid_argument_with_field_rule_and_message(
    echo_pb: Any, echo: ServiceHost
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
        stub = echo_pb[1].EchoServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Echo(echo_pb[0].EchoRequest(message="x" * 65), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as stream_err:
            async for _ in stub.EchoStream(echo_pb[0].EchoStreamRequest(count=101), timeout=5):
                pass
        # A valid request still works on the same server.
        reply = await stub.Echo(echo_pb[0].EchoRequest(message="x" * 64), timeout=5)
    assert reply.message == "x" * 64
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = _details(err.value)
    assert info.reason == "INVALID_FIELD"
    [violation] = bad.field_violations
    assert (violation.field, violation.reason) == ("message", "string.max_len")
    assert "64" in violation.description
    assert (err.value.details() or "").startswith("message: ")
    assert stream_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = _details(stream_err.value)[1].field_violations
    assert (violation.field, violation.reason) == ("count", "int32.gte_lte")


def test_field_path_matches_protobuf_es_path_to_string() -> None:
    path = validate_pb2.FieldPath(
        elements=[
            validate_pb2.FieldPathElement(field_name="messages", index=2),
            validate_pb2.FieldPathElement(field_name="content"),
        ]
    )
    assert field_path(path) == "messages[2].content"
    keyed = validate_pb2.FieldPath(
        elements=[validate_pb2.FieldPathElement(field_name="metadata", string_key='a"b\n')]
    )
    assert field_path(keyed) == 'metadata["a\\"b\\n"]'
    flag = validate_pb2.FieldPath(
        elements=[validate_pb2.FieldPathElement(field_name="m", bool_key=True)]
    )
    assert field_path(flag) == "m[true]"


async def test_malformed_request_is_logged_and_counted(echo_pb_dir: Path) -> None:
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ECHO_SERVER),
            "--pb-dir",
            str(echo_pb_dir),
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(bytes.fromhex("0a01ff"), timeout=15, wait_for_ready=True)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def counted() -> list[str]:
            # The server records the call after the client already has its status.
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            counts = [
                line
                for line in text.splitlines()
                if line.startswith("rpc_server_duration_milliseconds_count") and ECHO in line
            ]
            return [line for line in counts if 'status_code="INVALID_ARGUMENT"' in line]

        assert await asyncio.to_thread(
            wait_until, counted, timeout_s=30, what="the INVALID_ARGUMENT call in /metrics"
        )
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.stderr is not None
    records = [
        json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.strip()
    ]
    access = [r for r in records if r.get("method") == ECHO]
    assert [r["code"] for r in access] == ["INVALID_ARGUMENT"], access


async def test_custom_cel_rules_run_through_protovalidate(echo_pb: Any, echo: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{echo.port}") as channel:
        stub = echo_pb[1].EchoServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.EchoStream(
                echo_pb[0].EchoStreamRequest(count=1, interval_ms=20000), timeout=5
            ):
                pass
        got = [m.index async for m in stub.EchoStream(echo_pb[0].EchoStreamRequest(count=2))]
    assert got == [0, 1]
    [violation] = _details(err.value)[1].field_violations
    assert (violation.field, violation.reason) == ("", "echo.interval")
    assert violation.description == "interval_ms must be below 10000"
