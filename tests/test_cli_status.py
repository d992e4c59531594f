"""``llmesh status`` with a stale or missing run file: it says so and probes nothing that
is not this home's (a mesh of another home runs on the default ports here: a live
registry listing a worker, standing in for the default ports via ``DEFAULT_PORTS``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmesh.testing.inprocess import serving
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_cli.supervisor import report
from llmesh_cli.supervisor.state import ServiceRecord, UpState, write_state

OTHER_WORKER = "worker-of-another-mesh"


@pytest.fixture
async def other_mesh(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, list[str]]]:
    """A registry (with a worker) on what ``llmesh status`` takes for the default ports;
    returns the addresses each probe was asked about."""
    from llmesh_registry import wiring
    from llmesh_registry.settings import RegistrySettings

    settings = RegistrySettings(port=0)
    async with serving(settings, wiring.SERVICE_NAMES, lambda h: wiring.wire(h, settings)) as reg:
        async with grpc.aio.insecure_channel(reg.address) as channel:
            await registry_pb2_grpc.RegistryServiceStub(channel).Register(
                registry_pb2.RegisterRequest(
                    worker=common_pb2.WorkerInfo(
                        worker_id=OTHER_WORKER,
                        address="127.0.0.1:1",
                        state=common_pb2.WORKER_STATE_READY,
                    )
                ),
                timeout=10,
            )
        monkeypatch.setattr(report, "DEFAULT_PORTS", {"registry": reg.host.port})
        probed: dict[str, list[str]] = {"health": [], "registry": []}
        health, view = report.ready_state, report.registry_view

        async def ready_state(probe: str, address: str) -> str:
            probed["health"].append(address)
            return await health(probe, address)

        async def registry_view(address: str) -> Any:
            probed["registry"].append(address)
            return await view(address)

        monkeypatch.setattr(report, "ready_state", ready_state)
        monkeypatch.setattr(report, "registry_view", registry_view)
        yield probed


def _stale_home(home: Path, port: int) -> int:
    """A run file whose supervisor is gone, recording a registry on ``port``."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_state(
        home,
        UpState(
            supervisor_pid=dead.pid,
            services=[
                ServiceRecord(name="registry", address=f"127.0.0.1:{port}", pid=dead.pid, log="x")
            ],
        ),
    )
    return dead.pid


async def test_a_stale_run_file_is_reported_and_nothing_is_probed(
    tmp_path: Path, other_mesh: dict[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    port = report.DEFAULT_PORTS["registry"]
    pid = _stale_home(tmp_path, port)
    code = await report.status(tmp_path, registry=None, as_json=False, probe_defaults=True)
    out = capsys.readouterr().out
    assert code == 1
    assert "stale run file" in out and str(pid) in out and "up.json" in out
    assert OTHER_WORKER not in out
    assert other_mesh == {"health": [], "registry": []}  # neither recorded nor default ports

    code = await report.status(tmp_path, registry=None, as_json=True, probe_defaults=True)
    payload = json.loads(capsys.readouterr().out)
    assert code == 1 and payload["stale_run_file"] is True
    assert payload["recorded_supervisor_pid"] == pid
    assert [s["health"] for s in payload["services"]] == ["not probed"]
    assert OTHER_WORKER not in json.dumps(payload)


async def test_another_home_without_a_run_file_probes_no_default_port(
    tmp_path: Path,
    other_mesh: dict[str, list[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmesh_cli.status import _status

    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "default-home"))
    args = argparse.Namespace(home=tmp_path / "elsewhere", registry=None, api_key=None, json=False)
    assert await asyncio.to_thread(_status, args) == 1
    out = capsys.readouterr().out
    assert "not running" in out and "elsewhere" in out and OTHER_WORKER not in out
    assert other_mesh == {"health": [], "registry": []}

    # The default home (no --home) still probes the default ports, as documented.
    args = argparse.Namespace(home=None, registry=None, api_key=None, json=True)
    assert await asyncio.to_thread(_status, args) == 1  # no llmesh up of its own
    payload = json.loads(capsys.readouterr().out)
    assert payload["views"]["registry"] == [OTHER_WORKER]
    assert other_mesh["registry"]
