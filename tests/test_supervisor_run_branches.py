"""In-process tests of ``llmesh up``'s checks before it starts anything
(supervisor/run.py): already running, unknown or missing services, the production
profile's backing servers, busy ports, a model that cannot be imported; and the
production profile's missing-backing messages (supervisor/profiles.py)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from llmesh_cli.supervisor import profiles, run
from llmesh_cli.supervisor.state import UpState, write_state


def _options(tmp_path: Path, **overrides: Any) -> run.UpOptions:
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "services": ["registry"],
        "free_ports": False,
        "metrics": False,
        "model_size": "test",
        "model": "tiny",
        "models_dir": tmp_path / "models",
        "embeddings": False,
        "grace_s": 1.0,
        "max_crashes": 1,
        "crash_window_s": 10.0,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 1.0,
        "log_level": "INFO",
    }
    return run.UpOptions(**(values | overrides))


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps long lines on a narrow console


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


async def test_already_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    options = _options(tmp_path)
    write_state(options.home, UpState(supervisor_pid=os.getpid()))
    assert await run.run_up(options) == 1
    assert f"already running (pid {os.getpid()})" in capsys.readouterr().out


async def test_unknown_service_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wide: None
) -> None:
    assert await run.run_up(_options(tmp_path, services=["registry", "nosuch"])) == 2
    out = capsys.readouterr().out
    assert "unknown service(s): nosuch; choose from registry, inference" in out


def test_services_not_installed_are_left_out_and_registrar_needs_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console = Console(record=True, width=300)
    monkeypatch.setattr(run, "installed", lambda name: name != "inference")
    options = _options(Path("/nonexistent"), services=None)
    chosen = run._choose_services(options, console)
    assert chosen == ["registry", "memory", "gateway", "openai"]  # no registrar without a worker
    assert "inference is not installed here; starting without it" in console.export_text()
    monkeypatch.setattr(run, "installed", lambda name: True)
    both = _options(Path("/x"), services=["registry", "inference", "registrar"])
    assert run._choose_services(both, console) == ["registry", "inference", "registrar"]


async def test_production_without_backing_servers(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    wide: None,
) -> None:
    monkeypatch.setattr(run, "missing_backing", lambda: ["redis-server (install it)"])
    assert await run.run_up(_options(tmp_path, profile="production")) == 1
    assert "the production profile needs redis-server (install it)" in capsys.readouterr().out


def test_missing_backing_names_each_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(profiles, "postgres_bin", lambda: None)
    missing = profiles.missing_backing()
    assert len(missing) == 2
    assert "redis-server is not on PATH" in missing[0] and "apt-get install" in missing[0]
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(profiles, "postgres_bin", lambda: Path("/opt/pg/bin"))
    assert profiles.missing_backing() == []


async def test_busy_ports_are_named(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    held_port: int,
    wide: None,
) -> None:
    monkeypatch.setattr(run, "profile_ports", lambda profile, services: {"registry": held_port})
    monkeypatch.setattr(
        run, "profile_metrics_ports", lambda profile, services: {"registry": held_port}
    )
    assert await run.run_up(_options(tmp_path, metrics=True)) == 1
    out = capsys.readouterr().out
    assert f"port(s) in use: {held_port} (registry), {held_port} (registry metrics)" in out
    assert "--free-ports" in out


async def test_free_ports_avoid_busy_ones_then_a_model_import_failure_stops_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    held_port: int,
    wide: None,
) -> None:
    from llmesh_inference.importing import ModelImportError

    monkeypatch.setattr(run, "installed", lambda name: True)
    monkeypatch.setattr(
        run, "profile_ports", lambda profile, services: dict.fromkeys(services, held_port)
    )
    monkeypatch.setattr(
        run, "profile_metrics_ports", lambda profile, services: dict.fromkeys(services, held_port)
    )

    async def cannot(models_dir: Path, *, name: str, console: Any) -> Path:
        raise ModelImportError(f"no model {name!r} in {models_dir}")

    monkeypatch.setattr(run, "ensure_default_model", cannot)
    options = _options(
        tmp_path,
        services=["registry", "inference"],
        free_ports=True,
        metrics=True,
        model_size="smollm2",
        model="mine",
    )
    assert await run.run_up(options) == 1
    out = capsys.readouterr().out
    assert "port(s) in use" not in out  # --free-ports picked others
    assert "no model 'mine' in" in out


def test_port_helpers(held_port: int) -> None:
    assert not run._port_free(held_port)
    port = run._free_port()
    assert 0 < port != held_port
