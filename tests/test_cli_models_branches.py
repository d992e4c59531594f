"""In-process tests of ``llmesh models``' branches (apps/cli/llmesh_cli/models.py).

``list`` runs on a copy of the session's tiny test model (with and without an import
record, with a worker that has it loaded, with one that does not answer); ``import``
runs with the import itself replaced, so its output and exit codes are checked fast.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import llmesh_cli.supervisor.models as supervisor_models
from llmesh_cli import models
from llmesh_inference import blas
from llmesh_inference.importing import RECORD, ModelImportError

TINY = "tiny-llama-test"


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLMESH_INFERENCE_MODELS_DIR", raising=False)
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "home"))
    assert models._default_models_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("LLMESH_INFERENCE_MODELS_DIR", str(tmp_path / "explicit"))
    assert models._default_models_dir() == tmp_path / "explicit"
    monkeypatch.setenv("LLMESH_INFERENCE_MODELS_DIR", "")
    monkeypatch.delenv("LLMESH_HOME")
    assert models._default_models_dir() == Path("~/.llmesh/models").expanduser()


def _import_args(tmp_path: Path, **overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "source": tmp_path / "m.gguf",
        "models_dir": tmp_path / "models",
        "name": None,
        "dtype": "auto",
        "force": False,
        "no_smoke": False,
    }
    return argparse.Namespace(**(values | overrides))


_RECORD = {"architecture": "llama", "parameters": 1234567, "dtype": "float32", "context_length": 64}


@pytest.mark.parametrize("smoke_text", ["hello world", None])
def test_import_prints_the_result(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    smoke_text: str | None,
) -> None:
    seen: dict[str, Any] = {}

    def fake(source: Path, models_dir: Path, **kwargs: Any) -> Any:
        seen.update(kwargs, source=source, models_dir=models_dir)
        return SimpleNamespace(
            path=models_dir / "mine", record=_RECORD, smoke_text=smoke_text, seconds=2.5
        )

    monkeypatch.setattr(supervisor_models, "import_with_progress", fake)
    args = _import_args(tmp_path, name="mine", dtype="float16", force=True, no_smoke=True)
    assert models._import(args) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "llama, 1,234,567 parameters, float32, context 64" in out
    assert f"imported {tmp_path / 'models' / 'mine'} in 2.5 s:" in out
    assert f"--models-dir {tmp_path / 'models'} --default-model mine" in out
    assert ("smoke check (greedy): 'hello world'" in out) == (smoke_text is not None)
    assert seen["name"] == "mine"
    assert seen["dtype"] == "float16"
    assert seen["overwrite"] is True
    assert seen["smoke"] is False


@pytest.mark.parametrize("exc", [ModelImportError("unsupported quant Q2_K"), OSError("disk full")])
def test_import_failure_exits_2_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    exc: Exception,
) -> None:
    def fake(*_a: Any, **_k: Any) -> Any:
        raise exc

    monkeypatch.setattr(supervisor_models, "import_with_progress", fake)
    assert models._import(_import_args(tmp_path)) == 2
    assert f"llmesh models import: {exc}" in capsys.readouterr().err


def test_import_defaults_to_the_home_models_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLMESH_INFERENCE_MODELS_DIR", str(tmp_path / "env-models"))
    seen: list[Path] = []

    def fake(source: Path, models_dir: Path, **_k: Any) -> Any:
        seen.append(models_dir)
        raise ModelImportError("stop")

    monkeypatch.setattr(supervisor_models, "import_with_progress", fake)
    models._import(_import_args(tmp_path, models_dir=None))
    assert seen == [tmp_path / "env-models"]


@pytest.fixture
def models_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """Two copies of the tiny model: ``plain`` (no record) and ``imported`` (a record)."""
    folder = tmp_path / "models"
    shutil.copytree(tiny_model_dir / TINY, folder / "plain")
    shutil.copytree(tiny_model_dir / TINY, folder / "imported")
    (folder / "imported" / RECORD).write_text(
        json.dumps({"source": "x.gguf", "architecture": "llama"})
    )
    return folder


def _list_args(models_dir: Path | None, *, address: str | None = None, js: bool = False) -> Any:
    return argparse.Namespace(models_dir=models_dir, address=address, json=js)


def _no_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "find_openblas_preload", lambda: None)


def test_list_json_marks_loaded_models(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_preload(monkeypatch)
    loaded = {"imported": SimpleNamespace(memory_bytes=3 * 2**20)}
    worker = {"loaded": loaded, "blas": "openblas", "device": "cpu"}
    monkeypatch.setattr(models, "_worker_models", lambda address: (worker, None))
    assert models._list(_list_args(models_dir, address="h:1", js=True)) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in report["models"]}
    assert set(rows) == {"plain", "imported"}
    assert rows["imported"]["loaded"] is True
    assert rows["imported"]["memory_bytes"] == 3 * 2**20
    assert rows["imported"]["source"] == "x.gguf"
    assert rows["plain"]["loaded"] is False
    assert rows["plain"]["memory_bytes"] == 0
    assert rows["plain"]["source"] == ""
    assert rows["plain"]["parameters"] > 0
    assert report["blas"]["running_worker_blas"] == "openblas"
    assert report["blas"]["worker_blas"].startswith("reference")
    assert report["blas"]["openblas"] == ""


def test_list_text(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        blas, "find_openblas_preload", lambda: SimpleNamespace(library=Path("/opt/libob.so"))
    )
    loaded = {"plain": SimpleNamespace(memory_bytes=2**20)}
    worker = {"loaded": loaded, "blas": "accelerate", "device": "cpu"}
    monkeypatch.setattr(models, "_worker_models", lambda address: (worker, None))
    assert models._list(_list_args(models_dir, address="h:1")) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"models in {models_dir}:"
    plain = next(line for line in lines if line.strip().startswith("plain"))
    imported = next(line for line in lines if line.strip().startswith("imported"))
    assert plain.endswith("loaded, 1.0 MiB")
    assert imported.endswith("on disk")
    assert "llama from x.gguf" in out  # the record's line, for the imported model only
    assert out.count(" from ") == 1
    assert "BLAS for workers started here: openblas (preloaded" in out
    assert "BLAS of the worker at h:1: accelerate" in out


def test_list_text_empty_dir_and_unreachable_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_preload(monkeypatch)
    monkeypatch.setattr(
        models, "_worker_models", lambda address: ({}, f"worker at {address} did not answer: X")
    )
    (tmp_path / "empty").mkdir()
    assert models._list(_list_args(tmp_path / "empty", address="h:2")) == 0
    out = capsys.readouterr().out
    assert "(none: `llmesh models init-tiny` writes a test model)" in out
    assert "(worker at h:2 did not answer: X)" in out
    assert "BLAS for workers started here: reference" in out
    assert "BLAS of the worker" not in out


def test_list_without_address_asks_no_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_preload(monkeypatch)

    def never(address: str) -> Any:
        raise AssertionError("no worker to ask")

    monkeypatch.setattr(models, "_worker_models", never)
    monkeypatch.setenv("LLMESH_INFERENCE_MODELS_DIR", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    assert models._list(_list_args(None, js=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models_dir"] == str(tmp_path / "env")
    assert "running_worker_blas" not in report["blas"]


def test_worker_models_unreachable_names_the_status() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker, problem = models._worker_models(f"127.0.0.1:{port}")
    assert worker == {}
    assert problem == f"worker at 127.0.0.1:{port} did not answer: UNAVAILABLE"


def test_init_tiny_writes_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmesh_inference import tiny

    written: list[tuple[Path, str, int]] = []

    def fake(path: Path, *, size: str, seed: int) -> Path:
        written.append((path, size, seed))
        return path

    monkeypatch.setattr(tiny, "init_tiny", fake)
    args = argparse.Namespace(dir=tmp_path, name=None, size="small", seed=7)
    assert models._init_tiny(args) == 0
    assert written == [(tmp_path / tiny.DEFAULT_NAMES["small"], "small", 7)]
    out = capsys.readouterr().out
    assert f"--models-dir {tmp_path} --default-model {tiny.DEFAULT_NAMES['small']}" in out
    monkeypatch.setenv("LLMESH_INFERENCE_MODELS_DIR", str(tmp_path / "env"))
    args = argparse.Namespace(dir=None, name="custom", size="test", seed=0)
    assert models._init_tiny(args) == 0
    assert written[-1] == (tmp_path / "env" / "custom", "test", 0)
