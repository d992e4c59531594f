"""The door's entry-point helpers (bind, flags, uvicorn settings) and the error shape's
remaining branches, in-process."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import grpc
import pytest

from llmesh.kernel import errors
from llmesh.kernel.config import ConfigError
from llmesh.kernel.interceptors import STATUS_DETAILS_KEY
from llmesh_openai.app import _overrides, bind, build_parser, uvicorn_config
from llmesh_openai.errors import OpenAIError, ParamMap, from_gateway
from llmesh_openai.settings import OpenAISettings


def test_bind_refuses_a_public_host_without_tls() -> None:
    with pytest.raises(ConfigError, match=r"'0\.0\.0\.0' without TLS"):
        bind(OpenAISettings(host="0.0.0.0", port=0))


def test_bind_picks_a_free_port_with_nodelay_capable_tcp() -> None:
    sock = bind(OpenAISettings(port=0))
    try:
        assert sock.family == socket.AF_INET
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[1] > 0
        assert not sock.getblocking()
    finally:
        sock.close()


def test_bind_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = bind(OpenAISettings(host="[::1]", port=0))
    except ConfigError:
        pytest.skip("::1 not configured here")
    try:
        assert sock.family == socket.AF_INET6
    finally:
        sock.close()


def test_bind_a_taken_port_is_a_config_error() -> None:
    first = bind(OpenAISettings(port=0))
    try:
        port = first.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"port: cannot bind 127\.0\.0\.1:{port}"):
            bind(OpenAISettings(port=port))
    finally:
        first.close()


def test_flags() -> None:
    args = build_parser().parse_args(["--gateway", "10.0.0.1:50051", "--port", "0"])
    assert _overrides(args) == {"gateway_address": "10.0.0.1:50051"}
    assert _overrides(build_parser().parse_args([])) == {"gateway_address": None}


def test_uvicorn_config_is_hardened(tmp_path: Path) -> None:
    plain = uvicorn_config(OpenAISettings(port=0, max_header_bytes=4096), app=object())
    assert plain.server_header is False and plain.http == "h11"
    assert plain.h11_max_incomplete_event_size == 4096
    assert plain.ssl_certfile is None and plain.ssl_cert_reqs == ssl.CERT_NONE
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    settings = OpenAISettings(
        port=0,
        tls={
            "cert_file": tmp_path / "cert.pem",
            "key_file": tmp_path / "key.pem",
            "client_ca_file": tmp_path / "ca.pem",
        },
    )
    mtls = uvicorn_config(settings, app=object())
    assert mtls.ssl_certfile == str(tmp_path / "cert.pem")
    assert mtls.ssl_keyfile == str(tmp_path / "key.pem")
    assert mtls.ssl_ca_certs == str(tmp_path / "ca.pem")
    assert mtls.ssl_cert_reqs == ssl.CERT_REQUIRED


def test_error_text_and_metadata() -> None:
    error = OpenAIError(429, "slow down", metadata={"limit": "10"}, retry_after_s=0.0004)
    assert str(error) == "slow down"
    assert error.body()["error"]["llmesh"] == {"limit": "10"}
    # at least a second in Retry-After; the exact time in milliseconds
    assert error.headers() == {"retry-after": "1", "retry-after-ms": "0"}


def test_param_map_passes_unknown_paths_through() -> None:
    params = ParamMap((("input.sampling.", ""), ("input", "messages")))
    assert params.param("other.field") == "other.field"
    assert params.param("input") == "messages"
    assert params.param("input.sampling.top_p") == "top_p"
    assert ParamMap().param("x") == "x"


def test_a_peer_error_without_text_is_named_by_its_code() -> None:
    error = errors.FailedPrecondition("")
    trailers = grpc.aio.Metadata((STATUS_DETAILS_KEY, error.to_status().SerializeToString()))
    exc = grpc.aio.AioRpcError(error.code, grpc.aio.Metadata(), trailers, "")
    out = from_gateway(exc, ParamMap())
    assert out.status == 400 and out.message == "FAILED_PRECONDITION"
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "secret internals"
    )
    fault = from_gateway(bare, ParamMap())
    assert (fault.status, fault.type) == (500, "server_error")
    assert fault.message == "gateway call failed (INTERNAL)"  # not the peer's text
    assert fault.retry_after_s is None
