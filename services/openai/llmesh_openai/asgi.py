"""The door's ASGI application: routes, and one middleware doing per request what the
kernel interceptor does per RPC.

Per request, in order: request id (``x-request-id`` or a new one), the deadline (the
client's timeout header, or the default, capped), the SERVER span (parent from
``traceparent``), the kernel's request context (so the gateway call gets the remaining
time, the request id and the trace), then the route; any :class:`OpenAIError` becomes
OpenAI's error JSON with its status and ``Retry-After``; RED metrics and one access-log
line at the end.

Timeout headers, first found wins: ``x-request-timeout`` (seconds; ours),
``x-stainless-timeout`` (sent by the official Node SDK), ``x-stainless-read-timeout``
(sent by the official Python SDK: its ``timeout``).
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmesh.kernel.context import RequestContext, current_request, reset_request, set_request
from llmesh.kernel.logging import get_logger
from llmesh.kernel.metrics_http import REFUSALS, MetricsAccess
from llmesh.kernel.telemetry import meter
from llmesh_openai.errors import OpenAIError
from llmesh_openai.gateway import GatewayClient
from llmesh_openai.routes import Routes
from llmesh_openai.settings import OpenAISettings

log = get_logger("llmesh.access")

TIMEOUT_HEADERS = (b"x-request-timeout", b"x-stainless-timeout", b"x-stainless-read-timeout")
REQUEST_ID_HEADER = b"x-request-id"
ROUTES = (
    ("/v1/chat/completions", ("POST",)),
    ("/v1/completions", ("POST",)),
    ("/v1/embeddings", ("POST",)),
    ("/v1/models", ("GET",)),
    ("/v1/models/{model:path}", ("GET",)),
    ("/v1/llmesh/workers", ("GET",)),
)
QUIET = ("/health", "/health/live", "/metrics")


def deadline_of(headers: dict[bytes, bytes], settings: OpenAISettings) -> float:
    """Seconds the request may take: the client's timeout header or the default, capped."""
    for name in TIMEOUT_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw.decode("latin-1"))
        except ValueError:
            value = math.nan
        if name != TIMEOUT_HEADERS[0] and math.isfinite(value) and value == 0:
            continue  # the Node SDK truncates to whole seconds: "0" means under a second
        if not (math.isfinite(value) and value > 0):
            raise OpenAIError(
                400,
                f"header {name.decode()} must be a positive number of seconds",
                param=name.decode(),
                code="invalid_value",
            )
        return min(value, settings.max_deadline_s)
    return settings.default_deadline_s


class RequestMiddleware:
    """Request id, deadline, span, request context, error shape, metrics, access log."""

    def __init__(self, app: ASGIApp, settings: OpenAISettings) -> None:
        self.app = app
        self.settings = settings
        self._tracer = trace.get_tracer("llmesh.openai")
        m = meter("llmesh.openai")
        self._duration = m.create_histogram(
            "http.server.duration", unit="ms", description="HTTP request duration by route"
        )
        self._routes = {path for path, _ in ROUTES} | set(QUIET)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if _header_bytes(scope) > self.settings.max_header_bytes:
            await _too_large_headers(self.settings.max_header_bytes, send)
            return
        route = (
            path
            if path in self._routes
            else ("/v1/models/{model}" if path.startswith("/v1/models/") else "other")
        )
        headers = dict(scope["headers"])
        request_id = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")
        if not 0 < len(request_id) <= 128:
            request_id = uuid.uuid4().hex
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
        parent = propagate.extract(carrier)
        quiet = path in QUIET
        span = self._tracer.start_span(
            f"{scope['method']} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "http.route": route},
        )
        ctx = RequestContext(request_id=request_id, method=f"{scope['method']} {route}")
        token = set_request(ctx)
        try:
            with trace.use_span(span, end_on_exit=False):
                try:
                    ctx.deadline = time.monotonic() + deadline_of(headers, self.settings)
                    await self.app(scope, receive, send_wrapper)
                except OpenAIError as exc:
                    if response_started:
                        raise
                    await error_response(exc)(scope, receive, send_wrapper)
        except Exception:
            log.error("unhandled error in %s %s", scope["method"], path, exc_info=True)
            if not response_started:
                await error_response(internal_error(request_id))(scope, receive, send_wrapper)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(status)))
            span.end()
            reset_request(token)
            self._duration.record(elapsed_ms, {"http.route": route, "http.status": str(status)})
            if not quiet:
                log.log(
                    20 if status < 400 or status == 499 else 30,
                    "%s %s %d %.1fms",
                    scope["method"],
                    route,
                    status,
                    elapsed_ms,
                    extra={"code": str(status), "duration_ms": round(elapsed_ms, 3)},
                )


def _header_bytes(scope: Scope) -> int:
    """Size of the request line and headers as received (roughly: names, values, CRLFs)."""
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


async def _too_large_headers(limit: int, send: Send) -> None:
    # h11 bounds a header section that arrives in pieces; this bounds one that came whole.
    body = OpenAIError(
        431, f"the request's headers exceed {limit} bytes", code="request_header_too_large"
    ).body()
    await JSONResponse(
        body,
        status_code=431,
        headers={"x-content-type-options": "nosniff", "connection": "close"},
    )({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def internal_error(request_id: str) -> OpenAIError:
    """The answer to a bug: OpenAI's error shape, naming the request id to report."""
    return OpenAIError(
        500, f"internal error; quote request id {request_id} when reporting it", type="server_error"
    )


def error_response(exc: OpenAIError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


def _endpoint(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    return handler


def build_app(
    settings: OpenAISettings,
    gateway: GatewayClient,
    *,
    metrics: Callable[[], bytes] | None = None,
) -> ASGIApp:
    """The ASGI app for ``gateway`` (its channel is opened and closed by the caller)."""
    routes = Routes(gateway, max_body_bytes=settings.max_message_bytes)

    async def health(_request: Request) -> Response:
        ready = await gateway.ready(settings.health_timeout_s)
        body = {"status": "SERVING" if ready else "NOT_SERVING", "gateway": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def live(_request: Request) -> Response:
        return JSONResponse({"status": "SERVING"})

    access = MetricsAccess(settings.metrics_token_file)

    async def prometheus(request: Request) -> Response:
        # The door's HTTP port is public: the kernel's scrape rule applies here too.
        refused = access.refusal(
            client_host=request.client.host if request.client else "",
            authorization=request.headers.get("authorization"),
        )
        if refused is not None:
            headers = {"www-authenticate": 'Bearer realm="metrics"'} if refused == 401 else {}
            return PlainTextResponse(REFUSALS[refused][1], status_code=refused, headers=headers)
        text = metrics() if metrics is not None else _prometheus_text()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    handlers = {
        "/v1/chat/completions": routes.chat_completions,
        "/v1/completions": routes.completions,
        "/v1/embeddings": routes.embeddings,
        "/v1/models": routes.models,
        "/v1/models/{model:path}": routes.model,
        "/v1/llmesh/workers": routes.workers,
    }
    table = [
        Route(path, _endpoint(handlers[path]), methods=list(methods)) for path, methods in ROUTES
    ]
    table += [
        Route("/health", health, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]

    async def not_found(request: Request, _exc: Exception) -> Response:
        return error_response(
            OpenAIError(
                404,
                f"no route {request.method} {request.url.path}",
                type="not_found_error",
                code="unknown_url",
            )
        )

    async def not_allowed(request: Request, _exc: Exception) -> Response:
        return error_response(
            OpenAIError(
                405,
                f"{request.method} is not allowed on {request.url.path}",
                code="method_not_allowed",
            )
        )

    async def openai_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OpenAIError)
        return error_response(exc)

    async def server_error(_request: Request, _exc: Exception) -> Response:
        # Starlette's outermost middleware answers a bug before RequestMiddleware sees it
        # (then re-raises it, for the log): without this handler as text/plain.
        ctx = current_request()
        return error_response(internal_error(ctx.request_id if ctx else ""))

    app = Starlette(
        routes=table,
        exception_handlers={
            404: not_found,
            405: not_allowed,
            OpenAIError: openai_error,
            Exception: server_error,
        },
    )
    return RequestMiddleware(app, settings)


def _prometheus_text() -> bytes:
    from prometheus_client import REGISTRY, generate_latest

    return bytes(generate_latest(REGISTRY))


@contextlib.asynccontextmanager
async def door(settings: OpenAISettings) -> AsyncIterator[ASGIApp]:
    """The app with its gateway channel open (closed on exit)."""
    from llmesh.kernel.channels import create_channel

    tls = settings.client_tls if settings.client_tls.enabled else None
    channel = create_channel(
        settings.gateway_address,
        tls=tls,
        max_message_bytes=settings.max_message_bytes,
        retries=False,
    )
    try:
        yield build_app(settings, GatewayClient(channel))
    finally:
        await channel.close(None)
