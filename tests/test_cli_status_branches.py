"""In-process tests of ``llmesh status`` with a live run file (supervisor/report.py, its
tables and probes): scripted registries and a gateway on free loopback ports, each with
its own health, so every output branch is checked without starting a mesh."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llmesh.kernel import errors
from llmesh.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from llmesh_cli.supervisor import probe, report
from llmesh_cli.supervisor.state import ServiceRecord, UpState, write_state


def _worker(wid: str, *, state: int = common_pb2.WORKER_STATE_READY, **kw: Any) -> Any:
    return common_pb2.WorkerInfo(worker_id=wid, address="127.0.0.1:9", state=state, **kw)


@dataclass
class Registry(registry_pb2_grpc.RegistryServiceServicer):
    workers: list[Any] = field(default_factory=list)

    async def ListWorkers(self, request: Any, context: Any) -> Any:
        return registry_pb2.RegistryServiceListWorkersResponse(workers=self.workers)


@dataclass
class Admin(gateway_pb2_grpc.AdminServiceServicer):
    workers: list[Any] = field(default_factory=list)

    async def ListWorkers(self, request: Any, context: Any) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != "Bearer admin-key":
            error = errors.PermissionDenied("the admin role is needed")
            await context.abort(error.code, error.message)
        return gateway_pb2.ListWorkersResponse(workers=self.workers)


@dataclass
class Served:
    address: str
    health: health.aio.HealthServicer


async def _serve(servicer: Any, add: Any, stack: list[Any], ready: bool = True) -> Served:
    server = grpc.aio.server()
    add(servicer, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    status = health_pb2.HealthCheckResponse.SERVING if ready else 2
    await checker.set("readiness", status)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stack.append(server)
    return Served(f"127.0.0.1:{port}", checker)


@pytest.fixture
async def servers() -> AsyncIterator[list[Any]]:
    stack: list[Any] = []
    try:
        yield stack
    finally:
        for server in stack:
            await server.stop(None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _mesh(tmp_path: Path, servers: list[Any], *, gateway_ready: bool = True) -> Path:
    shared = _worker(
        "w-1",
        state_reason="",
        models_loaded=["m"],
        load=common_pb2.WorkerLoad(active_requests=2, queued_requests=1, free_slots=5),
    )
    draining = _worker("w-2", state=common_pb2.WORKER_STATE_DRAINING, state_reason="SIGTERM")
    r1 = await _serve(
        Registry([shared]), registry_pb2_grpc.add_RegistryServiceServicer_to_server, servers
    )
    r2 = await _serve(
        Registry([shared, draining]),
        registry_pb2_grpc.add_RegistryServiceServicer_to_server,
        servers,
    )
    gw = await _serve(
        Admin([shared]),
        gateway_pb2_grpc.add_AdminServiceServicer_to_server,
        servers,
        ready=gateway_ready,
    )
    home = tmp_path / "home"
    records = [
        ServiceRecord("registry-1", r1.address, pid=101, log="r1.log", status="running"),
        ServiceRecord("registry-2", r2.address, pid=102, log="r2.log", status="running"),
        ServiceRecord("gateway-1", gw.address, pid=None, log="g.log", status="restarting"),
    ]
    write_state(home, UpState(supervisor_pid=os.getpid(), services=records, profile="production"))
    return home


async def test_json_with_an_admin_key_shows_who_sees_each_worker(
    tmp_path: Path, servers: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    home = await _mesh(tmp_path, servers)
    code = await report.status(home, registry=None, as_json=True, api_key="admin-key")
    assert code == 0  # every service SERVING
    payload = json.loads(capsys.readouterr().out)
    assert payload["supervisor_pid"] == os.getpid() and payload["profile"] == "production"
    assert [s["health"] for s in payload["services"]] == ["SERVING"] * 3
    assert sorted(w["workerId"] for w in payload["workers"]) == ["w-1", "w-2"]
    assert payload["views"] == {
        "registry-1": ["w-1"],
        "registry-2": ["w-1", "w-2"],
        "gateway-1": ["w-1"],
    }


async def test_text_without_a_key_and_a_gateway_not_ready(
    tmp_path: Path,
    servers: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich folds cells on a narrow console
    home = await _mesh(tmp_path, servers, gateway_ready=False)
    code = await report.status(home, registry=None, as_json=False, api_key=None)
    assert code == 1  # one service is not SERVING
    out = " ".join(capsys.readouterr().out.split())
    assert "gateway-1: needs an admin key" in out
    assert "NOT_SERVING" in out and "restarting" in out
    assert "DRAINING (SIGTERM)" in out and "READY" in out
    assert "registry-1, registry-2" in out  # seen by both registries
    assert "probing defaults" not in out


async def test_a_wrong_key_is_reported_per_gateway(
    tmp_path: Path, servers: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    home = await _mesh(tmp_path, servers)
    await report.status(home, registry=None, as_json=True, api_key="user-key")
    views = json.loads(capsys.readouterr().out)["views"]
    state = report.read_state(home)
    assert state is not None
    address = next(r.address for r in state.services if r.name == "gateway-1")
    expected = f"gateway at {address}: PERMISSION_DENIED (the admin role is needed)"
    assert views["gateway-1"] == expected


async def test_no_run_file_probes_only_the_explicit_registry(
    tmp_path: Path,
    servers: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    reg = await _serve(
        Registry([_worker("w-9")]), registry_pb2_grpc.add_RegistryServiceServicer_to_server, servers
    )
    home = tmp_path / "empty"
    code = await report.status(
        home, registry=reg.address, as_json=False, api_key=None, probe_defaults=False
    )
    assert code == 1  # no supervisor: never "all healthy"
    out = " ".join(capsys.readouterr().out.split())
    assert "llmesh up is not running (no live state in" in out
    assert "w-9" in out and "seen by" not in out  # one source: no seen-by column


async def test_unreachable_registry_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    code = await report.status(
        tmp_path, registry=address, as_json=True, api_key=None, probe_defaults=False
    )
    assert code == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["services"] == [] and payload["supervisor_pid"] is None
    assert payload["workers"] == f"registry at {address} unreachable (UNAVAILABLE)"


async def test_stale_run_file_is_reported_in_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    record = ServiceRecord("registry", "127.0.0.1:1", pid=1, log="x")
    write_state(tmp_path, UpState(supervisor_pid=dead, services=[record]))
    assert await report.status(tmp_path, registry=None, as_json=False) == 1
    assert "stale run file" in capsys.readouterr().out
    assert await report.status(tmp_path, registry=None, as_json=True) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["stale_run_file"] is True and payload["recorded_supervisor_pid"] == dead
    assert payload["services"][0]["health"] == "not probed"
    assert payload["profile"] == "local"


async def test_missing_run_file_without_defaults_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await report.status(
        tmp_path, registry=None, as_json=True, api_key=None, probe_defaults=False
    )
    assert code == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["stale_run_file"] is False and payload["profile"] is None
    assert "Pass --registry" in payload["message"] and payload["services"] == []


def test_merge_keeps_the_first_listing_and_skips_failures() -> None:
    first = _worker("w-1", state_reason="first")
    later = _worker("w-1", state_reason="later")
    workers, seen_by = report.merge({"a": [first], "b": "down", "c": [later, _worker("w-2")]})
    assert [w.state_reason for w in workers] == ["first", ""]
    assert seen_by == {"w-1": ["a", "c"], "w-2": ["c"]}


async def test_health_of_states(servers: list[Any]) -> None:
    reg = await _serve(Registry(), registry_pb2_grpc.add_RegistryServiceServicer_to_server, servers)
    assert await probe.health_of(reg.address) == "SERVING"
    assert await probe.health_of(reg.address, service="nothing-registered") == "UNKNOWN"
    assert await probe.health_of(f"127.0.0.1:{_closed_port()}") == probe.UNREACHABLE


@pytest.mark.parametrize("kind", ["redis", "http", "postgres"])
def test_backing_probes_of_a_closed_port_are_false(kind: str) -> None:
    assert probe.backing_ready(kind, f"127.0.0.1:{_closed_port()}", timeout_s=5) is False


def test_unknown_backing_probe() -> None:
    with pytest.raises(ValueError, match="unknown probe 'ftp'"):
        probe.backing_ready("ftp", "127.0.0.1:1")


async def test_ready_state_of_a_backing_server() -> None:
    assert await probe.ready_state("redis", f"127.0.0.1:{_closed_port()}") == probe.UNREACHABLE
