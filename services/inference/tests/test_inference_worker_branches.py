"""In-process tests of InferenceWorker's branches (worker.py) without starting its engine.

The worker is built on an empty (or tiny) models folder; where a branch needs the MLX
thread, ``worker.engine`` is replaced by a stand-in whose ``call`` runs the function
here, so drain, warm-up, health and unload decisions are checked fast and exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import llmesh_inference.worker as worker_mod
from llmesh.kernel.errors import FailedPrecondition, NotFound
from llmesh_inference.llamacpp.select import LLAMA_CPP, MLX
from llmesh_inference.settings import InferenceSettings
from llmesh_inference.worker import STALL, InferenceWorker


def _worker(models_dir: Path, health: Any = None, **values: Any) -> InferenceWorker:
    settings = InferenceSettings(
        port=0, models_dir=models_dir, log_format="text", grace_period_s=4.0, **values
    )
    return InferenceWorker(settings, health)


class _Engine:
    """Runs ``call``'s function here; optional failures first."""

    def __init__(self, fail: list[BaseException] | None = None) -> None:
        self.fail = list(fail or [])
        self.calls: list[Any] = []
        self.last_progress = time.monotonic()
        self.busy = False

    async def call(self, fn: Callable[[], Any]) -> Any:
        self.calls.append(fn)
        if self.fail:
            raise self.fail.pop(0)
        return fn()


class _Health:
    def __init__(self) -> None:
        self.ready = False
        self.parts: dict[str, bool] = {}
        self.log: list[tuple[str, bool]] = []

    def part_live(self, part: str) -> bool:
        return self.parts.get(part, True)

    async def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.log.append(("ready", ready))

    async def set_live(self, live: bool, *, part: str) -> None:
        self.parts[part] = live
        self.log.append((part, live))


class _Handle:
    def __init__(self, worker: InferenceWorker, tokens: int) -> None:
        self.worker, self.tokens = worker, tokens
        self.errors: list[Any] = []

    def interrupt(self, error: Any) -> None:
        self.errors.append(error)
        self.worker.untrack(self)  # type: ignore[arg-type]


def test_cut_error_says_how_far_the_generation_got(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    after = worker._cut_error(12)
    assert after.reason == "STREAM_INTERRUPTED"
    assert after.metadata == {"tokens_delivered": "12"}
    assert "grace period (4s) ended after 12 tokens" in after.message
    before = worker._cut_error(0)
    assert before.reason == "WORKER_DRAINING" and not before.metadata
    assert "before this request started" in before.message


def test_refuse_if_draining(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    worker.refuse_if_draining()  # not draining: nothing
    worker.draining = True
    with pytest.raises(Exception) as info:
        worker.refuse_if_draining()
    assert getattr(info.value, "reason", None) == "WORKER_DRAINING"


async def test_drain_with_nothing_in_flight_turns_readiness_off(tmp_path: Path) -> None:
    health = _Health()
    health.ready = True
    worker = _worker(tmp_path, health)
    worker.engine = _Engine()  # type: ignore[assignment]
    await worker.drain(time.monotonic() + 60)
    assert worker.draining and not worker.is_ready()
    assert health.log == [("ready", False)]


async def test_drain_past_its_deadline_interrupts_what_is_in_flight(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    started, waiting = _Handle(worker, tokens=5), _Handle(worker, tokens=0)
    for handle in (started, waiting):
        worker.track(handle)  # type: ignore[arg-type]
    assert not worker._idle.is_set()
    await worker.drain(time.monotonic() - 1)  # the grace period is already over
    assert [e.reason for e in started.errors] == ["STREAM_INTERRUPTED"]
    assert [e.reason for e in waiting.errors] == ["WORKER_DRAINING"]
    assert not worker.inflight and worker._idle.is_set()


def test_track_untrack(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    a, b = object(), object()
    worker.track(a)  # type: ignore[arg-type]
    worker.track(b)  # type: ignore[arg-type]
    worker.untrack(a)  # type: ignore[arg-type]
    assert not worker._idle.is_set()  # b still runs
    worker.untrack(a)  # type: ignore[arg-type]  # twice: harmless
    worker.untrack(b)  # type: ignore[arg-type]
    assert worker._idle.is_set()


def test_readiness_rules(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    assert worker.default_model is None and worker.pinned() == set()
    assert not worker.is_ready()  # nothing loaded, no embedder
    worker._embedder = object()  # type: ignore[assignment]
    assert worker.is_ready() and worker.embedder_loaded
    named = _worker(tmp_path, default_model="m")
    assert named.pinned() == {"m"}
    assert not named.is_ready()  # its default model is not loaded
    named.draining = True
    assert not named.is_ready()


def test_liveness_needs_work_and_no_progress(tmp_path: Path) -> None:
    worker = _worker(tmp_path, stall_timeout_s=5)
    engine = _Engine()
    worker.engine = engine  # type: ignore[assignment]
    engine.last_progress = time.monotonic() - 3600
    assert worker.is_live()  # no work: an idle thread is not stalled
    engine.busy = True
    assert not worker.is_live()
    engine.last_progress = time.monotonic() + 3600
    assert worker.is_live()


async def test_refresh_health_publishes_changes_only(tmp_path: Path) -> None:
    health = _Health()
    worker = _worker(tmp_path, health, stall_timeout_s=5)
    engine = _Engine()
    worker.engine = engine  # type: ignore[assignment]
    await worker.refresh_health()
    assert health.log == []  # not ready, live: as the reporter already says
    worker._embedder = object()  # type: ignore[assignment]
    engine.busy, engine.last_progress = True, time.monotonic() - 3600
    await worker.refresh_health()
    assert health.log == [("ready", True), (STALL, False)]
    engine.last_progress = time.monotonic() + 3600
    await worker.refresh_health()
    assert health.log[-1] == (STALL, True)
    await _worker(tmp_path).refresh_health()  # no reporter: nothing to do


async def test_warm_up_without_a_model_loads_the_embedder_only(tmp_path: Path) -> None:
    worker = _worker(tmp_path, embeddings=True)
    engine = _Engine(fail=[RuntimeError("no weights here")])
    worker.engine = engine  # type: ignore[assignment]
    await worker._warm_up()  # the embedder's failure is not fatal
    assert engine.calls == [worker.embedder]
    quiet = _worker(tmp_path, embeddings=False)
    quiet.engine = engine  # type: ignore[assignment]
    await quiet._warm_up()
    assert len(engine.calls) == 1  # embeddings off: nothing loaded


async def test_warm_up_loads_default_and_preloads_once_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _worker(tmp_path, default_model="a", preload_models=["b", "a"])
    loaded: list[tuple[str, set[str]]] = []
    worker.store = SimpleNamespace(  # type: ignore[assignment]
        load=lambda name, protect: loaded.append((name, protect)),
        get=lambda name: None,
        available=list,
    )
    engine = _Engine(fail=[RuntimeError("bad weights")])
    worker.engine = engine  # type: ignore[assignment]
    await worker._warm_up()
    assert len(engine.calls) == 2  # a (failed, logged), then b
    assert loaded == [("b", {"a"})]  # the default model is protected from eviction
    assert "cannot load model a at start: bad weights" in caplog.text


async def test_warm_up_with_a_llama_server_child_only_refreshes(tmp_path: Path) -> None:
    health = _Health()
    worker = _worker(tmp_path, health, default_model="a")
    worker.child = object()  # type: ignore[assignment]
    engine = _Engine()
    worker.engine = engine  # type: ignore[assignment]
    await worker._warm_up()
    assert engine.calls == []  # the child loads its own model
    assert worker.engine_blas == "ggml"


async def test_unload_refusals_and_busy_retry(tmp_path: Path) -> None:
    worker = _worker(tmp_path, default_model="d")
    unloaded: list[str] = []
    loaded = {"d", "x"}
    worker.store = SimpleNamespace(  # type: ignore[assignment]
        get=lambda name: object() if name in loaded else None,
        unload=lambda name: unloaded.append(name) or 1234,
        loaded_names=lambda: sorted(loaded),
    )
    with pytest.raises(NotFound) as missing:
        await worker.unload("nope", force=False)
    assert missing.value.reason == "MODEL_NOT_LOADED"
    with pytest.raises(FailedPrecondition) as default:
        await worker.unload("d", force=False)
    assert default.value.reason == "DEFAULT_MODEL"
    busy = FailedPrecondition("busy", reason="MODEL_BUSY")
    worker.engine = _Engine(fail=[busy])  # type: ignore[assignment]
    assert await worker.unload("x", force=False) == 1234  # retried after the busy answer
    assert unloaded == ["x"]
    worker.engine = _Engine()  # type: ignore[assignment]
    assert await worker.unload("d", force=True) == 1234
    other = FailedPrecondition("no", reason="SOMETHING_ELSE")
    worker.engine = _Engine(fail=[other])  # type: ignore[assignment]
    with pytest.raises(FailedPrecondition) as info:
        await worker.unload("x", force=False)
    assert info.value is other


def test_engine_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _worker(tmp_path, engine="mlx").engine_choice.reason == "engine = mlx"
    monkeypatch.setattr(worker_mod, "find_llama_server", lambda configured: None)
    auto = _worker(tmp_path, engine="auto", gguf=tmp_path / "missing.gguf")
    assert auto.engine_choice.engine == MLX
    assert "no llama-server binary" in auto.engine_choice.reason
    assert auto.default_model is None  # a missing gguf names no model
    assert auto.engine_name == MLX and auto.engine_blas == auto.blas


def test_engine_choice_names_the_model_after_the_gguf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "outside" / "SmolLM2.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    seen: dict[str, Any] = {}

    def choose(setting: str, **kw: Any) -> Any:
        seen.update(kw, setting=setting)
        return SimpleNamespace(engine=MLX, reason="test")

    monkeypatch.setattr(worker_mod, "choose_engine", choose)
    monkeypatch.setattr(worker_mod, "find_llama_server", lambda configured: None)
    worker = _worker(tmp_path / "models", engine="auto", gguf=gguf)
    assert worker.default_model == "SmolLM2"
    assert seen["gguf"] == gguf and seen["default_model"] == "SmolLM2"
    # a default model without an explicit gguf: looked up in its folder
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "m.gguf").write_bytes(b"GGUF")
    _worker(tmp_path / "models", engine="auto", default_model="m")
    assert seen["gguf"] == tmp_path / "models" / "m" / "m.gguf"
    assert LLAMA_CPP != MLX


def test_only_model_is_the_default_when_alone(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert _worker(tiny_model_dir).default_model == "tiny-llama-test"
    assert _worker(tmp_path).default_model is None
