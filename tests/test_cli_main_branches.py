"""``llmesh`` parsed and dispatched in-process (main.py, status.py, up.py): commands that
answer without a running mesh, and Ctrl-C."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from llmesh_cli import main as cli
from llmesh_cli.supervisor import run
from llmesh_cli.supervisor.state import UpState, write_state


def test_status_of_another_home_probes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "default-home"))
    assert cli.main(["status", "--home", str(tmp_path / "other"), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["stale_run_file"] is False
    assert "llmesh up is not running in" in payload["message"]


def test_up_passes_every_flag_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[run.UpOptions] = []

    async def fake_run_up(options: run.UpOptions) -> int:
        seen.append(options)
        return 7

    monkeypatch.setattr(run, "run_up", fake_run_up)
    argv = [
        "up", "--home", str(tmp_path), "--services", "registry, gateway", "--free-ports",
        "--no-metrics", "--no-embeddings", "--log-level", "debug", "--max-crashes", "3",
    ]  # fmt: skip
    assert cli.main(argv) == 7
    options = seen[0]
    assert options.home == tmp_path and options.services == ["registry", "gateway"]
    assert options.free_ports and not options.metrics and not options.embeddings
    assert options.log_level == "DEBUG" and options.max_crashes == 3
    assert options.models_dir == tmp_path / "models"
    assert options.model  # the size's default model name
    assert cli.main(["up", "--home", str(tmp_path)]) == 7
    assert seen[1].services is None and seen[1].metrics


def test_up_already_running_through_main(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    write_state(tmp_path, UpState(supervisor_pid=os.getpid()))
    assert cli.main(["up", "--home", str(tmp_path)]) == 1
    assert "already running" in capsys.readouterr().out


def test_ctrl_c_is_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(_args: Any) -> int:
        raise KeyboardInterrupt

    parser = cli.build_parser()
    args = parser.parse_args(["status", "--home", str(tmp_path)])
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(args, interrupted))
    assert cli.main([]) == 130


class _Fixed:
    def __init__(self, args: Any, func: Any) -> None:
        args.func = func
        self.args = args

    def parse_args(self, _argv: Any) -> Any:
        return self.args
