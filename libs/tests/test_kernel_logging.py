"""JSON log lines, context fields and redaction."""

from __future__ import annotations

import io
import json
import logging

from llmesh.kernel.context import RequestContext, reset_request, set_request
from llmesh.kernel.logging import fingerprint, redact, setup_logging


def test_redacts_bearer_tokens_jwts_and_keys() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = redact(f"auth Bearer abc.def-123 jwt {jwt} key lmk_ab12_SECRETSECRETSECRET")
    assert "abc.def-123" not in text
    assert jwt not in text
    assert "SECRETSECRETSECRET" not in text
    assert fingerprint("abc.def-123") in text


def test_json_lines_carry_context_and_redact_secret_fields() -> None:
    stream = io.StringIO()
    setup_logging("unit", stream=stream)
    token = set_request(RequestContext(request_id="req-1", method="/x.v1.S/M"))
    try:
        logging.getLogger("unit.test").info(
            "hello %s", "world", extra={"api_key": "plain-secret", "count": 3}
        )
    finally:
        reset_request(token)
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert record["message"] == "hello world"
    assert record["service"] == "unit"
    assert record["request_id"] == "req-1"
    assert record["method"] == "/x.v1.S/M"
    assert record["count"] == 3
    assert "plain-secret" not in stream.getvalue()
    assert record["api_key"].startswith("[sha256:")


def test_service_processes_log_uncaught_errors_as_json() -> None:
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from llmesh.kernel.logging import setup_logging\n"
        "setup_logging('unit', capture_uncaught=True)\n"
        "class Bad:\n"
        "    def __del__(self):\n"
        "        raise RuntimeError('in del')\n"
        "Bad()\n"
        "t = threading.Thread(target=lambda: 1 / 0)\n"
        "t.start(); t.join()\n"
        "raise ValueError('uncaught')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # nothing but JSON on stderr
    messages = " | ".join(r["message"] for r in records)
    assert "exception ignored" in messages
    assert "uncaught exception in thread" in messages
    assert "uncaught ValueError" in messages
    assert all("exception" in r for r in records)
