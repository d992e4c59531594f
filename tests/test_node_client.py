"""The generated Node stubs speak the same wire format as the Python ones."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llmesh.v1 import gateway_pb2

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "clients" / "node" / "smoke.js"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def test_node_encodes_what_python_decodes() -> None:
    out = subprocess.run(
        ["node", str(SMOKE)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    request = gateway_pb2.ChatRequest.FromString(
        base64.b64decode(json.loads(out)["chat_request_b64"])
    )
    assert request.session_id == "s-1"
    assert request.message == "héllo from node"
    assert request.history_limit == 7
    assert request.recall.k == 3
    assert request.recall.HasField("semantic_weight") and request.recall.semantic_weight == 0.5
    assert dict(request.recall.metadata_filter) == {"topic": "ops"}
