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
