"""The Prometheus endpoint: ``/metrics`` over HTTP, protected and hardened.

Who may scrape (:class:`MetricsAccess`): with a token file, only callers sending
``Authorization: Bearer <token>`` (the file is re-read on each scrape, so a rotated
Kubernetes Secret applies without a restart; an unreadable file refuses everyone);
without one, only loopback callers. The OpenAI door applies the same rule to the
``/metrics`` route of its HTTP port.

What the server (:func:`start_metrics_server`) refuses before any metrics code runs:
a request line over :data:`MAX_REQUEST_LINE` bytes (414), a header section over
:data:`MAX_HEADER_BYTES` (431), any request body (413), methods other than GET/HEAD
(405), paths other than ``/metrics`` (404), a client idle for :data:`IDLE_TIMEOUT_S`
(connection closed). Every answer carries ``X-Content-Type-Options: nosniff`` and
``Cache-Control: no-store``, and none names the server software.
"""

from __future__ import annotations

import hmac
import http.client
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, make_server

from llmesh.kernel.config import is_loopback
from llmesh.kernel.logging import get_logger

log = get_logger(__name__)

MAX_REQUEST_LINE = 4096
MAX_HEADER_BYTES = 8192
IDLE_TIMEOUT_S = 10.0
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"))

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class MetricsAccess:
    """The scrape rule: a bearer token from ``token_file``, else loopback callers only."""

    token_file: Path | None = None

    def refusal(self, *, client_host: str, authorization: str | None) -> int | None:
        """``None`` when the caller may scrape, else the HTTP status to answer (401/403)."""
        if self.token_file is None:
            return None if is_loopback(client_host) else 403
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.error("metrics token file %s unreadable (%s)", self.token_file, exc.strerror)
            return 401
        scheme, _, presented = (authorization or "").partition(" ")
        if not token or scheme.lower() != "bearer":
            return 401
        return None if hmac.compare_digest(presented.strip().encode(), token.encode()) else 401


REFUSALS = {
    401: ("401 Unauthorized", b"metrics need Authorization: Bearer <token>\n"),
    403: ("403 Forbidden", b"metrics are served to loopback callers only\n"),
}


def metrics_app(access: MetricsAccess, registry: Any = None) -> WsgiApp:
    """The WSGI app: the access rule, then prometheus_client's exposition."""
    from prometheus_client import REGISTRY, make_wsgi_app

    exposition = make_wsgi_app(REGISTRY if registry is None else registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def respond(status: str, body: bytes, *extra: tuple[str, str]) -> Iterable[bytes]:
            headers = [("Content-Type", "text/plain; charset=utf-8"), *extra]
            start_response(status, [*headers, ("Content-Length", str(len(body)))])
            return [body]

        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return respond("405 Method Not Allowed", b"GET only\n", ("Allow", "GET, HEAD"))
        if environ.get("PATH_INFO") != "/metrics":
            return respond("404 Not Found", b"metrics are at /metrics\n")
        status = access.refusal(
            client_host=str(environ.get("REMOTE_ADDR", "")),
            authorization=environ.get("HTTP_AUTHORIZATION"),
        )
        if status is not None:
            line, body = REFUSALS[status]
            extra = (("WWW-Authenticate", 'Bearer realm="metrics"'),) if status == 401 else ()
            return respond(line, body, *extra)
        return exposition(environ, start_response)  # type: ignore[no-any-return]

    def with_headers(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def secured(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            names = {name.lower() for name, _ in headers}
            extra = [h for h in SECURITY_HEADERS if h[0].lower() not in names]
            return start_response(status, [*headers, *extra], *exc)

        return app(environ, secured)

    return with_headers


class _Bounded:
    """The request's input while headers are read: at most ``left`` bytes in total."""

    def __init__(self, raw: Any, left: int) -> None:
        self.raw = raw
        self.left = left

    def readline(self, limit: int = -1) -> bytes:
        cap = self.left + 1 if limit < 0 else min(limit, self.left + 1)
        line: bytes = self.raw.readline(cap)
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong(f"header section over {MAX_HEADER_BYTES} bytes")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _Software(ServerHandler):
    server_software = ""  # no Server header on WSGI answers


class _Handler(WSGIRequestHandler):
    """wsgiref's handler with limits, no server banner, no access log."""

    timeout = IDLE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""

    def send_response(self, code: int, message: str | None = None) -> None:
        # The stdlib's error path: no Server header, the security headers.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)

    def handle(self) -> None:
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        raw = self.rfile
        self.rfile = _Bounded(raw, MAX_HEADER_BYTES)  # type: ignore[assignment]
        try:
            if not self.parse_request():  # answered already (431 when over the limit)
                return
        finally:
            self.rfile = raw
        length = self.headers.get("Content-Length", "0").strip()
        if self.headers.get("Transfer-Encoding") or not length.isdigit() or int(length) > 0:
            self.close_connection = True
            self.send_error(413, "metrics requests carry no body")
            return
        wfile: Any = self.wfile
        handler = _Software(
            self.rfile, wfile, self.get_stderr(), self.get_environ(), multithread=False
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


@dataclass
class MetricsServer:
    """A running metrics endpoint (a daemon thread)."""

    server: Any
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_metrics_server(
    *, host: str, port: int, access: MetricsAccess, registry: Any = None
) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (0: a free port) in a daemon thread."""
    from prometheus_client.exposition import ThreadingWSGIServer

    family = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):  # type: ignore[misc]
        address_family = family

    httpd = make_server(
        host.strip("[]"), port, metrics_app(access, registry), Server, handler_class=_Handler
    )
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server=httpd, thread=thread)
