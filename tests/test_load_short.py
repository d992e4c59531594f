"""The short form of the load suite (``bench/load.py``): a few clients for a few seconds
through a real mesh (registry, worker + registrar, memory, gateway), every method
answered, no unexpected error, no call waiting past its deadline; and the outcome
classes the report is built from (a refusal is not an error, a deadline is both an
error and a late call)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ is a top-level package of the checkout

from bench.load import METHODS, LoadConfig, Sample, markdown, summarize  # noqa: E402


def test_outcomes_are_classified_apart() -> None:
    cfg = LoadConfig(clients=1, duration_s=1.0)
    samples = [
        Sample("generate_stream", "OK", "", 0.2, 30.0, ttft_s=0.05, tokens=8),
        Sample("generate_stream", "OK", "", 0.4, 30.0, ttft_s=0.10, tokens=8),
        Sample("generate_stream", "RESOURCE_EXHAUSTED", "QUEUE_FULL", 0.01, 30.0),
        Sample("chat", "DEADLINE_EXCEEDED", "", 30.0, 30.0),
        Sample("chat", "DEADLINE_EXCEEDED", "", 30.0, 30.0, ttft_s=1.0),
        Sample("embed", "UNAVAILABLE", "NO_READY_WORKER", 0.1, 30.0),
        Sample("recall", "OK", "", 0.02, 30.0),
    ]
    s = summarize(samples, 2.0, cfg)
    assert (s["calls"], s["ok"], s["refused"], s["errors"]) == (7, 3, 1, 3)
    assert s["waited_past_deadline"] == 2
    assert s["waited_past_deadline_before_first_token"] == 1
    assert s["refusals_by_reason"] == {"RESOURCE_EXHAUSTED/QUEUE_FULL": 1}
    assert s["errors_by_code"] == {"DEADLINE_EXCEEDED": 2, "UNAVAILABLE/NO_READY_WORKER": 1}
    assert s["target"]["met"] is False
    gen = s["methods"]["generate_stream"]
    assert (gen["calls"], gen["ok"], gen["refused"], gen["errors"]) == (3, 2, 1, 0)
    assert gen["latency_ms"]["p50"] == 400.0  # of the successful calls only
    assert gen["ttft_ms"]["max"] == 100.0
    assert s["tokens_per_s"] == 8.0
    ok_only = summarize(samples[:3], 1.0, cfg)  # refusals alone do not miss the target
    assert ok_only["errors"] == 0 and ok_only["target"]["met"] is True


@pytest.mark.slow
def test_short_load_through_a_real_mesh(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", "--clients", "4", "--duration", "4",
         "--workers", "1", "--out", str(out)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    s = result["summary"]
    assert s["errors"] == 0, s["errors_by_code"]
    assert s["waited_past_deadline"] == 0
    assert set(s["methods"]) == set(METHODS)
    for name, m in s["methods"].items():
        assert m["ok"] > 0, name
        assert m["latency_ms"]["p50"] > 0, name
    for streaming in ("generate_stream", "chat"):
        assert s["methods"][streaming]["ttft_ms"] is not None
        assert s["methods"][streaming]["tokens"] > 0
    assert result["conditions"]["clients"] == 4
    report = out.with_suffix(".md").read_text()
    assert report == markdown(result)
    assert "| generate_stream |" in report and "target" in report
