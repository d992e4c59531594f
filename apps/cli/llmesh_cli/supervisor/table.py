"""Tables printed by ``llmesh up`` and ``llmesh status``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table

from llmesh.v1 import common_pb2
from llmesh_cli.supervisor.state import ServiceRecord

_HEALTH_STYLE = {"SERVING": "green", "NOT_SERVING": "yellow", "UNREACHABLE": "red"}


def services_table(records: Sequence[ServiceRecord], health: dict[str, str]) -> Table:
    """service | address | pid | health | status."""
    table = Table(title="llmesh services", title_justify="left")
    for column in ("service", "address", "pid", "health", "status"):
        table.add_column(column, overflow="fold")
    for record in records:
        state = health.get(record.name, "?")
        style = _HEALTH_STYLE.get(state, "")
        table.add_row(
            record.name,
            record.address,
            str(record.pid) if record.pid else "-",
            f"[{style}]{state}[/]" if style else state,
            record.status,
        )
    return table


def workers_table(
    workers: Sequence[common_pb2.WorkerInfo],
    *,
    seen_by: Mapping[str, Sequence[str]] | None = None,
    sources: Sequence[str] = (),
) -> Table:
    """worker | address | state | models | load (| seen by: which registries and gateways
    list it, when there are several ``sources``)."""
    table = Table(title="inference workers", title_justify="left")
    columns = ["worker", "address", "state", "models loaded", "active", "queued", "free"]
    several = len(sources) > 1
    if several:
        columns.append("seen by")
    for column in columns:
        table.add_column(column, overflow="fold")
    for worker in workers:
        state = common_pb2.WorkerState.Name(worker.state).removeprefix("WORKER_STATE_")
        if worker.state_reason:
            state += f" ({worker.state_reason})"
        row = [
            worker.worker_id,
            worker.address,
            state,
            ", ".join(worker.models_loaded) or "-",
            str(worker.load.active_requests),
            str(worker.load.queued_requests),
            str(worker.load.free_slots),
        ]
        if several:
            row.append(", ".join((seen_by or {}).get(worker.worker_id, [])) or "-")
        table.add_row(*row)
    return table
