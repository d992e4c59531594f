"""JSON logs, one object per line, with request and trace ids; secrets redacted."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
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
    service: str, *, level: str = "INFO", fmt: str = "json", stream: TextIO | None = None
) -> None:
    """Route the root logger to ``stream`` (stderr) in JSON or text. Idempotent."""
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
    # Quiet chatty libraries at INFO.
    for name in ("grpc", "asyncio", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> logging.Logger:
    """A stdlib logger; pass structured fields with ``extra={...}``."""
    return logging.getLogger(name)
