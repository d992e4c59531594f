"""JSON logs, one object per line, with request and trace ids; secrets redacted."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
import time
from typing import Any, TextIO

from opentelemetry import trace

from llmesh.kernel.context import current_request

_BEARER = re.compile(r"(?i)\b(bearer)\s+([A-Za-z0-9._~+/=-]+)")
_KEY_LIKE = re.compile(r"\b(lmk_[A-Za-z0-9]+_)[A-Za-z0-9_-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SECRET_KEYS = re.compile(r"(?i)(authorization|api[_-]?key|password|secret|token|cookie)")

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def fingerprint(secret: str) -> str:
    """A short SHA-256 fingerprint, the only form in which a secret may be logged."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def redact(text: str) -> str:
    """Replace bearer tokens, API keys and JWTs in free text with fingerprints."""
    lowered = text.lower()
    if "bearer" not in lowered and "eyj" not in lowered and "lmk_" not in lowered:
        return text  # fast path: nothing that could be a credential
    text = _BEARER.sub(lambda m: f"{m.group(1)} [{fingerprint(m.group(2))}]", text)
    text = _JWT.sub(lambda m: f"[jwt {fingerprint(m.group(0))}]", text)
    return _KEY_LIKE.sub(lambda m: f"{m.group(1)}[redacted]", text)


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if _SECRET_KEYS.search(key):
            return f"[{fingerprint(value)}]"
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(key, v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """Formats records as JSON with service, request, trace and RPC fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        ctx = current_request()
        if ctx is not None:
            entry["request_id"] = ctx.request_id
            entry["method"] = ctx.method
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = f"{span.trace_id:032x}"
            entry["span_id"] = f"{span.span_id:016x}"
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = _redact_value(key, value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for terminals, still redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(
    service: str,
    *,
    level: str = "INFO",
    fmt: str = "json",
    stream: TextIO | None = None,
    capture_uncaught: bool = False,
) -> None:
    """Route the root logger to ``stream`` (stderr) in JSON or text. Idempotent.

    ``capture_uncaught`` (service processes) also turns uncaught, thread and
    unraisable exceptions into log records, so stderr carries only JSON lines.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_llmesh", False):
            root.removeHandler(old)
    handler._llmesh = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    if capture_uncaught and fmt == "json":
        _route_uncaught_errors_to_logging()
    # Quiet chatty libraries at INFO.
    for name in ("grpc", "asyncio", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def _route_uncaught_errors_to_logging() -> None:
    """Uncaught, thread and unraisable exceptions (``__del__``, atexit) become log
    records, so nothing but JSON lines reaches stderr."""
    errors = logging.getLogger("llmesh.uncaught")

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        errors.critical("uncaught %s", kind.__name__, exc_info=(kind, value, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        if args.exc_value is not None:
            errors.error(
                "uncaught exception in thread %s",
                name,
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            )

    def unraisable_hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        errors.warning(
            "exception ignored %s: %r",
            unraisable.err_msg or "in",
            unraisable.object,
            exc_info=(unraisable.exc_type, value, unraisable.exc_traceback) if value else None,
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook


def get_logger(name: str) -> logging.Logger:
    """A stdlib logger; pass structured fields with ``extra={...}``."""
    return logging.getLogger(name)
