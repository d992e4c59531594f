"""A small asyncio HTTP/1.1 client for the loopback ``llama-server``.

One connection per request (``Connection: close``), so closing it is how a request is
aborted: llama-server notices the closed connection and frees the slot. No runtime
dependency beyond the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


class HttpError(Exception):
    """A non-2xx answer (``status``, the parsed JSON body or its text)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces (chunked transfer encoding or until close/length)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await self.reader.readline()
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield data
        elif "content-length" in self.headers:
            yield await self.reader.readexactly(int(self.headers["content-length"]))
        else:
            while data := await self.reader.read(65536):
                yield data

    async def body(self) -> bytes:
        return b"".join([c async for c in self.chunks()])


async def open_request(
    host: str, port: int, method: str, path: str, payload: Any | None = None
) -> Response:
    """Send one request; returns once the status line and headers have arrived."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        body = b"" if payload is None else json.dumps(payload).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP answer from {host}:{port}: {status_line!r}")
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
    except BaseException:
        writer.close()
        raise
    return Response(int(parts[1]), headers, reader, writer)


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


async def request_json(
    host: str, port: int, method: str, path: str, payload: Any | None = None
) -> Any:
    """One JSON request and its parsed answer; raises :class:`HttpError` on non-2xx."""
    response = await open_request(host, port, method, path, payload)
    try:
        data = _parse(await response.body())
    finally:
        await response.close()
    if not 200 <= response.status < 300:
        raise HttpError(response.status, data)
    return data


async def server_sent_events(response: Response) -> AsyncIterator[Any]:
    """The ``data:`` payloads of an event stream, parsed as JSON, as they arrive."""
    buffer = b""
    async for chunk in response.chunks():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.splitlines():
                if line.startswith(b"data:"):
                    data = line[5:].strip()
                    if data and data != b"[DONE]":
                        yield _parse(data)
                elif line.startswith(b"error:"):
                    raise HttpError(500, _parse(line[6:].strip()))
