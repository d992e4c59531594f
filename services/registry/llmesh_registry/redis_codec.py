"""The Redis registry's wire format: Lua scripts, worker hashes and event entries.

``redis_backend`` keeps the layout described there; this module turns its Redis
replies into ``WorkerInfo`` records and ``Event`` s, and loads the scripts (each
``lua/<name>.lua`` with ``lua/prelude.lua`` in front).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from llmesh.v1 import common_pb2
from llmesh_registry.model import Event
from llmesh_registry.records import timestamp_ms

_SCRIPTS = ("register", "heartbeat", "deregister", "set_state", "snapshot", "sweep")


def load_scripts() -> dict[str, str]:
    """The source of every script by name, each with the shared prelude in front."""
    folder = resources.files("llmesh_registry").joinpath("lua")
    prelude = folder.joinpath("prelude.lua").read_text(encoding="utf-8")
    return {
        name: prelude + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in _SCRIPTS
    }


def pairs(flat: list[Any]) -> dict[bytes, bytes]:
    """A flat ``[field, value, ...]`` reply (HGETALL in Lua) as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def static_record(worker: common_pb2.WorkerInfo) -> bytes:
    """The parts of a worker that only Register changes."""
    static = common_pb2.WorkerInfo(
        worker_id=worker.worker_id,
        address=worker.address,
        labels=worker.labels,
        models_available=list(worker.models_available),
        capacity=worker.capacity,
        models=list(worker.models),
    )
    return static.SerializeToString(deterministic=True)


def decode_worker(worker_id: str, fields: dict[bytes, bytes]) -> common_pb2.WorkerInfo:
    """Rebuild a ``WorkerInfo`` from a worker hash (or an event's fields)."""
    worker = common_pb2.WorkerInfo()
    if b"static" in fields:
        worker.ParseFromString(fields[b"static"])
    worker.worker_id = worker_id
    if fields.get(b"models"):
        worker.models_loaded.extend(json.loads(fields[b"models"]))
    if b"state" in fields:
        worker.state = int(fields[b"state"])  # type: ignore[assignment]
    worker.state_reason = fields.get(b"reason", b"").decode()
    if fields.get(b"load"):
        worker.load.ParseFromString(fields[b"load"])
    for name, field_name in (
        (b"reg", "registered_at"),
        (b"hb", "last_heartbeat_at"),
        (b"exp", "lease_expires_at"),
    ):
        if name in fields:
            getattr(worker, field_name).CopyFrom(timestamp_ms(int(fields[name])))
    return worker


def event_from_entry(entry_id: bytes, data: dict[bytes, bytes]) -> Event:
    """An entry of the events stream (its id is ``<revision>-0``) as an ``Event``."""
    revision = int(entry_id.split(b"-", 1)[0])
    worker_id = data.get(b"id", b"").decode()
    return Event(
        revision=revision,
        type=int(data[b"t"]),
        worker=decode_worker(worker_id, data),
    )
