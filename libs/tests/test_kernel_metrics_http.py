"""The Prometheus endpoint: who may scrape (token or loopback) and the HTTP limits, each
against a real server on a free port."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from llmesh.kernel.config import ConfigError, ServiceSettings, load_settings
from llmesh.kernel.metrics_http import (
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    MetricsAccess,
    MetricsServer,
    start_metrics_server,
)


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("llmesh_test_scrapes", "a metric only this test registers", registry=registry).inc()
    return registry


def _own_address() -> str | None:
    """A non-loopback IPv4 address of this machine (the route to a TEST-NET address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # no packet is sent for a UDP connect
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret-token\n")
    return path


@pytest.fixture
def exposed(token_file: Path) -> Iterator[MetricsServer]:
    server = start_metrics_server(
        host="0.0.0.0", port=0, access=MetricsAccess(token_file), registry=_registry()
    )
    yield server
    server.close()


@pytest.fixture
def local() -> Iterator[MetricsServer]:
    server = start_metrics_server(
        host="127.0.0.1", port=0, access=MetricsAccess(), registry=_registry()
    )
    yield server
    server.close()


def _get(
    port: int, *, host: str = "127.0.0.1", path: str = "/metrics", **headers: str
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", path, headers=headers)
    reply = conn.getresponse()
    reply.read()
    conn.close()
    return reply


def _raw(port: int, request: bytes) -> tuple[int, str]:
    """Send ``request`` as is; the status code and the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    text = data.decode("latin-1")
    return int(text.split(" ", 2)[1]), text


def test_exposed_port_refuses_an_unauthenticated_scrape_and_accepts_the_token(
    exposed: MetricsServer, token_file: Path
) -> None:
    host = _own_address() or "127.0.0.1"
    refused = _get(exposed.port, host=host)
    assert refused.status == 401
    assert refused.getheader("WWW-Authenticate") == 'Bearer realm="metrics"'
    assert _get(exposed.port, host=host, Authorization="Bearer wrong").status == 401
    assert _get(exposed.port, host=host, Authorization="Basic s3cret-token").status == 401
    ok = _get(exposed.port, host=host, Authorization="Bearer s3cret-token")
    assert ok.status == 200
    # A rotated Secret applies at the next scrape; an unreadable one refuses everyone.
    token_file.write_text("rotated")
    assert _get(exposed.port, Authorization="Bearer s3cret-token").status == 401
    assert _get(exposed.port, Authorization="Bearer rotated").status == 200
    token_file.unlink()
    assert _get(exposed.port, Authorization="Bearer rotated").status == 401


def test_authenticated_scrape_returns_the_registry(exposed: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", exposed.port, timeout=5)
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer s3cret-token"})
    body = conn.getresponse().read().decode()
    conn.close()
    assert "llmesh_test_scrapes_total 1.0" in body


def test_without_a_token_only_loopback_callers_may_scrape(local: MetricsServer) -> None:
    assert _get(local.port).status == 200
    access = MetricsAccess()
    assert access.refusal(client_host="127.0.0.1", authorization=None) is None
    assert access.refusal(client_host="::1", authorization=None) is None
    assert access.refusal(client_host="10.1.2.3", authorization="Bearer x") == 403
    own = _own_address()
    if own is None:
        return
    server = start_metrics_server(host="0.0.0.0", port=0, access=access, registry=_registry())
    try:
        assert _get(server.port, host=own).status == 403
        assert _get(server.port).status == 200
    finally:
        server.close()


def test_answers_carry_nosniff_and_no_server_banner(local: MetricsServer) -> None:
    for reply in (_get(local.port), _get(local.port, path="/other")):
        assert reply.getheader("X-Content-Type-Options") == "nosniff"
        assert reply.getheader("Cache-Control") == "no-store"
        assert reply.getheader("Server") is None
    status, text = _raw(local.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 2000)
    assert status == 431
    assert "nosniff" in text and "Server:" not in text


def test_limits_refuse_long_lines_large_headers_bodies_and_other_methods(
    local: MetricsServer,
) -> None:
    long_line = b"GET /metrics?" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n\r\n"
    assert _raw(local.port, long_line)[0] == 414
    big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * MAX_HEADER_BYTES + b"\r\n\r\n"
    assert _raw(local.port, big)[0] == 431
    fits = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: " + b"p" * 4000
    assert _raw(local.port, fits + b"\r\n\r\n")[0] == 200
    body = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    assert _raw(local.port, body)[0] == 413
    chunked = b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert _raw(local.port, chunked)[0] == 413
    post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    status, text = _raw(local.port, post)
    assert status == 405 and "Allow: GET, HEAD" in text
    assert _get(local.port, path="/").status == 404


def test_exposed_metrics_without_a_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metrics_token_file"):
        load_settings(ServiceSettings, metrics_port=9461, metrics_host="0.0.0.0")
    load_settings(ServiceSettings, metrics_port=9461, metrics_host="127.0.0.1")
    load_settings(ServiceSettings, metrics_host="0.0.0.0")  # no metrics port: nothing served
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(ServiceSettings, metrics_token_file=empty)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(ServiceSettings, metrics_token_file=tmp_path / "missing")
    token = tmp_path / "token"
    token.write_text("t")
    settings = load_settings(
        ServiceSettings, metrics_port=9461, metrics_host="0.0.0.0", metrics_token_file=token
    )
    assert settings.metrics_token_file == token
