"""``llmesh status``: every child of ``llmesh up`` with its health, and the workers as
each registry and each gateway sees them.

A registry answers ``ListWorkers`` without credentials (it is internal, on loopback);
a gateway's view (``AdminService.ListWorkers``, its routing cache) needs an admin key.
In the production profile this shows that a worker registered through one registry is
seen by both gateways.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from llmesh.v1 import common_pb2
from llmesh_cli.supervisor.plan import ALL_SERVICES, DEFAULT_PORTS
from llmesh_cli.supervisor.probe import SERVING, ready_state
from llmesh_cli.supervisor.state import (
    ServiceRecord,
    UpState,
    read_recorded_state,
    read_state,
    state_path,
)
from llmesh_cli.supervisor.table import services_table, workers_table

# One source's workers, or why it could not say.
View = list[common_pb2.WorkerInfo] | str

# How long `llmesh status` waits for a registry's or a gateway's worker list: long
# enough for a mesh on a busy machine, short enough to report a hung one.
VIEW_TIMEOUT_S = 10.0


def _kind(name: str) -> str:
    return name.split("-", 1)[0]


async def registry_view(address: str) -> View:
    """The workers a registry lists."""
    from llmesh.kernel.context import deadline_scope
    from llmesh.v1 import registry_pb2, registry_pb2_grpc
    from llmesh_cli.client import open_channel, unary

    async with open_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        try:
            with deadline_scope(VIEW_TIMEOUT_S, name="llmesh status"):
                reply = await unary(
                    stub.ListWorkers, registry_pb2.RegistryServiceListWorkersRequest()
                )
        except grpc.aio.AioRpcError as exc:
            return f"registry at {address} unreachable ({exc.code().name})"
        return list(reply.workers)


async def gateway_view(address: str, api_key: str) -> View:
    """The workers a gateway routes to (its registry cache), via AdminService."""
    from llmesh.kernel.context import deadline_scope
    from llmesh.v1 import gateway_pb2, gateway_pb2_grpc
    from llmesh_cli.client import bearer, open_channel, unary

    async with open_channel(address) as channel:
        stub = gateway_pb2_grpc.AdminServiceStub(channel)
        try:
            with deadline_scope(VIEW_TIMEOUT_S, name="llmesh status"):
                reply = await unary(
                    stub.ListWorkers, gateway_pb2.ListWorkersRequest(), metadata=bearer(api_key)
                )
        except grpc.aio.AioRpcError as exc:
            return f"gateway at {address}: {exc.code().name} ({exc.details()})"
        return list(reply.workers)


def merge(views: dict[str, View]) -> tuple[list[common_pb2.WorkerInfo], dict[str, list[str]]]:
    """Every worker once (as the first source that lists it says), and who sees each."""
    workers: dict[str, common_pb2.WorkerInfo] = {}
    seen_by: dict[str, list[str]] = {}
    for source, view in views.items():
        if isinstance(view, str):
            continue
        for worker in view:
            workers.setdefault(worker.worker_id, worker)
            seen_by.setdefault(worker.worker_id, []).append(source)
    return list(workers.values()), seen_by


async def collect_views(
    records: Sequence[ServiceRecord], *, registry: str | None, api_key: str | None
) -> dict[str, View]:
    """Each registry's and each gateway's workers (gateways only with an admin key)."""
    registries = {r.name: r.address for r in records if _kind(r.name) == "registry"}
    if registry is not None or not registries:
        registries = {"registry": registry or "127.0.0.1:50052"}
    gateways = {r.name: r.address for r in records if _kind(r.name) == "gateway"}
    sources = [*registries, *gateways]
    calls = [registry_view(address) for address in registries.values()]
    if api_key:
        calls += [gateway_view(address, api_key) for address in gateways.values()]
    views = dict(zip(sources, await asyncio.gather(*calls), strict=False))
    for name in gateways:
        views.setdefault(name, "needs an admin key (LLMESH_API_KEY or --api-key)")
    return views


def not_running(
    home: Path, recorded: UpState | None, *, registry: str | None, probe_defaults: bool
) -> str | None:
    """Why nothing of ``home`` can be probed (a stale or missing run file), or None when
    the default ports (or an explicit ``--registry``) are to be probed instead."""
    path = state_path(home)
    if recorded is not None:
        return (
            f"stale run file {path}: the llmesh up that wrote it (pid "
            f"{recorded.supervisor_pid}) is no longer running, so nothing was probed "
            f"(the ports it recorded may belong to another mesh now). Start the mesh "
            f"with `llmesh up --home {home}`, or delete the file."
        )
    if probe_defaults or registry is not None:
        return None
    return (
        f"llmesh up is not running in {home} (no run file {path}); nothing was probed. "
        f"Pass --registry to probe a registry elsewhere."
    )


def _report_not_running(
    why: str, recorded: UpState | None, *, as_json: bool, console: Console
) -> int:
    if as_json:
        payload: dict[str, Any] = {
            "supervisor_pid": None,
            "stale_run_file": recorded is not None,
            "recorded_supervisor_pid": recorded.supervisor_pid if recorded else None,
            "message": why,
            "profile": recorded.profile if recorded else None,
            "services": [
                asdict(r) | {"health": "not probed"}
                for r in (recorded.services if recorded else [])
            ],
            "workers": why,
            "views": {},
        }
        print(json.dumps(payload, indent=2))
    else:
        console.print(why)
    return 1


async def status(
    home: Path,
    *,
    registry: str | None,
    as_json: bool,
    api_key: str | None = None,
    probe_defaults: bool = True,
) -> int:
    """Print services and workers; 0 when every service answers SERVING.

    A run file whose ``llmesh up`` is gone is reported as stale and nothing is probed;
    without a run file the default ports are probed only when ``probe_defaults`` (the
    default home) or an explicit ``registry`` asks for it.
    """
    from google.protobuf import json_format

    console = Console(highlight=False)
    state = read_state(home)
    if state is None:
        recorded = read_recorded_state(home)
        why = not_running(home, recorded, registry=registry, probe_defaults=probe_defaults)
        if why is not None:
            return _report_not_running(why, recorded, as_json=as_json, console=console)
    if state is not None:
        records = state.services
    elif not probe_defaults:
        records = []  # only the explicit --registry
    else:
        records = [
            ServiceRecord(name=n, address=f"127.0.0.1:{p}", pid=None, log="", status="unknown")
            for n, p in sorted(DEFAULT_PORTS.items(), key=lambda kv: ALL_SERVICES.index(kv[0]))
        ]
    health_list = await asyncio.gather(*(ready_state(r.probe, r.address) for r in records))
    health = {r.name: h for r, h in zip(records, health_list, strict=True)}
    views = await collect_views(records, registry=registry, api_key=api_key)
    workers, seen_by = merge(views)
    answered = any(not isinstance(view, str) for view in views.values())
    if as_json:
        payload: dict[str, Any] = {
            "supervisor_pid": state.supervisor_pid if state else None,
            "profile": state.profile if state else None,
            "services": [asdict(r) | {"health": health[r.name]} for r in records],
            # Every worker any source lists (why not, when no source answered).
            "workers": [json_format.MessageToDict(w) for w in workers]
            if answered
            else next(iter(views.values())),
            # Per registry and gateway: the worker ids it lists, or why it could not say.
            "views": {
                source: view if isinstance(view, str) else [w.worker_id for w in view]
                for source, view in views.items()
            },
        }
        print(json.dumps(payload, indent=2))
    else:
        if state is None:
            console.print(f"llmesh up is not running (no live state in {home}); probing defaults")
        console.print(services_table(records, health))
        for source, view in views.items():
            if isinstance(view, str):
                console.print(f"{source}: {view}")
        if answered:
            sources = [s for s, v in views.items() if not isinstance(v, str)]
            console.print(workers_table(workers, seen_by=seen_by, sources=sources))
    return 0 if state is not None and all(h == SERVING for h in health.values()) else 1
