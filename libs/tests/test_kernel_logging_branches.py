"""Kernel logging paths in process: secrets nested in structured fields, the text
format, re-running set-up (one llmesh handler), and the thread/unraisable hooks with
what they may lack. The root logger and the hooks are restored after each test."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from llmesh.kernel.logging import JsonFormatter, fingerprint, setup_logging


@pytest.fixture
def restore() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks


def _json(record: logging.LogRecord) -> dict[str, object]:
    return json.loads(JsonFormatter("svc").format(record))  # type: ignore[no-any-return]


def test_secrets_nested_in_fields_are_fingerprinted() -> None:
    record = logging.makeLogRecord(
        {
            "msg": "call",
            "headers": {"authorization": "Bearer abc", "x": "plain", "n": 3},
            "tokens": ["t1", "t2"],
            "notes": ("Bearer zzz", 4),
            "count": 7,
        }
    )
    entry = _json(record)
    assert entry["headers"] == {
        "authorization": f"[{fingerprint('Bearer abc')}]",
        "x": "plain",
        "n": 3,
    }
    assert entry["tokens"] == [f"[{fingerprint('t1')}]", f"[{fingerprint('t2')}]"]
    assert entry["notes"] == [f"Bearer [{fingerprint('zzz')}]", 4]
    assert entry["count"] == 7


def test_text_format_is_redacted_and_setup_is_idempotent(restore: None) -> None:
    stream = io.StringIO()
    setup_logging("svc", fmt="text", stream=stream, level="DEBUG")
    setup_logging("svc", fmt="text", stream=stream, level="DEBUG")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_llmesh", False)]
    assert len(ours) == 1
    logging.getLogger("t").info("sent Bearer secret123")
    line = stream.getvalue().strip()
    assert " INFO t: sent Bearer [" in line
    assert "secret123" not in line
    assert logging.getLogger("grpc").level == logging.WARNING


def test_text_format_does_not_capture_uncaught_errors(restore: None) -> None:
    before = sys.excepthook
    setup_logging("svc", fmt="text", stream=io.StringIO(), capture_uncaught=True)
    assert sys.excepthook is before


def test_hooks_log_what_they_get(restore: None) -> None:
    stream = io.StringIO()
    setup_logging("svc", stream=stream, capture_uncaught=True)
    threading.excepthook(
        SimpleNamespace(thread=None, exc_type=None, exc_value=None, exc_traceback=None)  # type: ignore[arg-type]
    )
    try:
        raise ValueError("in a thread")
    except ValueError as exc:
        threading.excepthook(
            SimpleNamespace(  # type: ignore[arg-type]
                thread=SimpleNamespace(name="worker-1"),
                exc_type=ValueError,
                exc_value=exc,
                exc_traceback=exc.__traceback__,
            )
        )
    sys.unraisablehook(
        SimpleNamespace(exc_type=None, exc_value=None, exc_traceback=None, err_msg=None, object="o")
    )
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    messages = [entry["message"] for entry in lines]
    assert messages == ["uncaught exception in thread worker-1", "exception ignored in: 'o'"]
    assert "ValueError: in a thread" in lines[0]["exception"]
    assert "exception" not in lines[1]
