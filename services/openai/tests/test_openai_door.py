"""The door served in-process (uvicorn on a free port) with no gateway behind it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2 as httpx  # the openai SDK's HTTP client
import openai

from llmesh.testing.servers import free_port
from llmesh_openai.app import serving
from llmesh_openai.settings import OpenAISettings


async def test_no_gateway_is_503_with_retry_after_and_health_says_so() -> None:
    settings = OpenAISettings(port=0, gateway_address=f"127.0.0.1:{free_port()}")
    async with serving(settings) as door, httpx.AsyncClient(base_url=door.url) as http:
        reply = await http.get("/v1/models", headers={"authorization": "Bearer k"})
        assert reply.status_code == 503
        assert reply.json()["error"]["type"] == "service_unavailable_error"
        assert int(reply.headers["retry-after"]) >= 1 and reply.headers["x-request-id"]
        health = await http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "NOT_SERVING"
        assert (await http.get("/health/live")).status_code == 200
        missing = await http.get("/v1/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
        wrong = await http.get("/v1/chat/completions")
        assert wrong.status_code == 405
        bad = await http.post("/v1/chat/completions", content=b"{not json")
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
        timeout = await http.post(
            "/v1/chat/completions", json={}, headers={"x-request-timeout": "soon"}
        )
        assert timeout.status_code == 400
        assert timeout.json()["error"]["param"] == "x-request-timeout"
        sdk = openai.AsyncOpenAI(base_url=f"{door.url}/v1", api_key="k", max_retries=0)
        try:
            await sdk.models.list()
        except openai.InternalServerError as exc:
            assert exc.status_code == 503
        else:
            raise AssertionError("no 503")


async def test_metrics_need_the_token_when_one_is_set_and_answers_are_hardened(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("door-token")
    settings = OpenAISettings(
        port=0,
        gateway_address=f"127.0.0.1:{free_port()}",
        metrics_token_file=token,
        max_message_bytes=2048,
        max_header_bytes=2048,
    )
    async with serving(settings) as door, httpx.AsyncClient(base_url=door.url) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Bearer realm="metrics"'
        assert (
            await http.get("/metrics", headers={"authorization": "Bearer no"})
        ).status_code == 401
        ok = await http.get("/metrics", headers={"authorization": "Bearer door-token"})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
        for reply in (ok, refused, await http.get("/v1/nothing")):
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert "server" not in reply.headers
        too_big = await http.post(
            "/v1/chat/completions",
            content=b'{"model": "m", "messages": [], "pad": "' + b"x" * 4096 + b'"}',
            headers={"authorization": "Bearer k", "content-type": "application/json"},
        )
        assert too_big.status_code == 413
        # Streamed without a length: cut off at the limit all the same.
        chunks = [b'{"pad": "', b"y" * 3000, b'"}']

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        streamed = await http.post("/v1/completions", content=body())
        assert streamed.status_code == 413
    async with serving(settings) as door:
        header = b"X-Pad: " + b"p" * 4096 + b"\r\n"
        status = await asyncio.to_thread(_raw_status, door.port, header)
        assert status == 431  # a header section that arrived whole
        dribbled = await asyncio.to_thread(_raw_status, door.port, header, pieces=True)
        assert dribbled == 400  # uvicorn's h11 answer to an oversized incomplete section


async def test_metrics_on_the_http_port_are_loopback_only_without_a_token() -> None:
    settings = OpenAISettings(host="0.0.0.0", allow_plaintext=True, port=0)
    async with serving(settings) as door:
        async with httpx.AsyncClient(base_url=door.url) as http:
            assert (await http.get("/metrics")).status_code == 200
        own = _own_address()
        if own is not None:
            async with httpx.AsyncClient(base_url=f"http://{own}:{door.port}") as http:
                assert (await http.get("/metrics")).status_code == 403


def _own_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def _raw_status(port: int, extra_header: bytes, *, pieces: bool = False) -> int:
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if pieces:  # the header section never completes: h11's buffer limit answers
            sock.sendall(request + extra_header)
        else:
            sock.sendall(request + extra_header + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])
