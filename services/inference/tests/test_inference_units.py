"""Small pure pieces: stop-sequence hold-back, sampling validation, tiny model, CLI, BLAS."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmesh.kernel.validation import RequestValidator
from llmesh.v1 import common_pb2
from llmesh_inference.blas import BlasPreload, detect_blas, find_openblas_preload
from llmesh_inference.sampling import parse_sampling
from llmesh_inference.textstream import TextStream
from llmesh_inference.tiny import init_tiny


class Pieces:
    """A detokenizer whose token ``i`` is ``pieces[i]``."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.text = ""
        self.offset = 0

    def add_token(self, token: int) -> None:
        self.text += self.pieces[token]

    def finalize(self) -> None:
        pass

    @property
    def last_segment(self) -> str:
        out, self.offset = self.text[self.offset :], len(self.text)
        return out


def run(pieces: list[str], stop: list[str]) -> tuple[list[str], bool]:
    stream = TextStream(Pieces(pieces), stop)
    out = [stream.add(i) for i in range(len(pieces)) if not stream.stopped]
    out.append(stream.finish())
    return out, stream.stopped


def test_text_that_may_start_a_stop_sequence_is_held_back() -> None:
    out, stopped = run(["Hello ", "wor", "ld. ", "END", "more"], ["END"])
    assert "".join(out) == "Hello world. " and stopped
    out, stopped = run(["a<", "/s", "> b"], ["</s>"])
    assert out[0] == "a" and "".join(out) == "a" and stopped
    out, stopped = run(["a<", "b"], ["</s>"])
    assert out == ["a", "<b", ""] and not stopped
    out, stopped = run(["x", "y"], [])
    assert out == ["x", "y", ""] and not stopped


def test_sampling_defaults_and_violations() -> None:
    options = parse_sampling(None, default_temperature=0.7, default_max_tokens=256)
    assert (options.temperature, options.top_p, options.top_k, options.max_tokens) == (
        0.7,
        1.0,
        0,
        256,
    )
    bad = common_pb2.SamplingParams(
        temperature=-1, top_p=0, top_k=-2, max_tokens=0, stop=["", *("s" * 9)]
    )
    # The ranges are the contract's rules, which the kernel checks on every request.
    violations = RequestValidator().violations(bad)
    assert [v.field for v in violations] == [
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "stop",
    ]


def test_init_tiny_is_deterministic(tmp_path: Path) -> None:
    def digest(folder: Path) -> dict[str, str]:
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()}

    a = init_tiny(tmp_path / "a", size="test")
    b = init_tiny(tmp_path / "b", size="test")
    assert digest(a) == digest(b)
    config = json.loads((a / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 512
    tokenizer_config = json.loads((a / "tokenizer_config.json").read_text())
    assert "add_generation_prompt" in tokenizer_config["chat_template"]


def test_cli_init_tiny_and_list(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "llmesh_cli.main", "models"]
    made = subprocess.run(
        [*cli, "init-tiny", str(tmp_path), "--name", "m1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "m1" in made.stdout and (tmp_path / "m1" / "model.safetensors").is_file()
    listed = subprocess.run(
        [*cli, "list", "--models-dir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(listed.stdout)
    assert [m["name"] for m in report["models"]] == ["m1"]
    assert report["models"][0]["parameters"] > 100_000
    assert report["blas"]["worker_blas"].split()[0] in {"openblas", "reference"}


def test_blas_preload_environment() -> None:
    preload = BlasPreload(Path("/x/libopenblas.so.0"), (Path("/links"),))
    env = preload.apply({"LD_PRELOAD": "/other.so", "LD_LIBRARY_PATH": "/lib1"})
    assert env["LD_PRELOAD"] == "/x/libopenblas.so.0:/other.so"
    assert env["LD_LIBRARY_PATH"] == "/links:/lib1"
    assert env["LLMESH_BLAS_PRELOADED"] == "1"
    assert detect_blas("gpu") == "n/a"


def test_doctor_reports_the_worker_blas() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmesh_cli.main", "doctor", "--json", "--no-speed"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(out.stdout)
    assert report["default"]["device"] in {"cpu", "gpu"}
    assert report["engines"]["mlx"]["available"] is True
    llama = report["engines"]["llama.cpp"]  # the optional engine: present or says how to build
    assert llama["available"] or "make llama-server" in llama["detail"]
    if sys.platform.startswith("linux") and find_openblas_preload() is not None:
        assert report["worker"]["blas"] == "openblas" and report["ok"] is True
        assert out.returncode == 0


def test_numpy_bundled_openblas_does_not_count_as_mlx_blas() -> None:
    # Without the preload MLX runs on mlx-cpu's reference BLAS, even though NumPy has
    # mapped its own (symbol-suffixed) libscipy_openblas64_ into the process.
    code = (
        "import numpy, mlx.core as mx\n"
        "from llmesh_inference.blas import detect_blas\n"
        "mx.eval(mx.ones((4, 4)) @ mx.ones((4, 4)))\n"
        "print(detect_blas())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"


def test_model_load_logs_progress_by_quarter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import mlx.core as mx

    from llmesh_inference import models

    monkeypatch.setattr(models, "PROGRESS_MIN_BYTES", 0)
    params = [(f"w{i}", mx.ones((256, 256))) for i in range(8)]
    total = sum(int(v.nbytes) for _, v in params)
    with caplog.at_level(logging.INFO, logger=models.__name__):
        models.ModelStore._materialize("demo", params, total)
    lines = [r.getMessage() for r in caplog.records if "loading model demo" in r.getMessage()]
    assert [line.split(": ")[1].split("%")[0] for line in lines] == ["25", "50", "75", "100"]
