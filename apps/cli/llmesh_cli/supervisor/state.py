"""The supervisor's state file (``<home>/run/up.json``), read by ``llmesh status``."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ServiceRecord:
    """One child as the state file records it."""

    name: str
    address: str
    pid: int | None
    log: str
    status: str = "starting"  # starting | running | restarting | failed | stopped
    probe: str = "grpc"  # how its readiness is checked (grpc | redis | postgres)


@dataclass
class UpState:
    """What ``llmesh up`` is running."""

    supervisor_pid: int
    services: list[ServiceRecord] = field(default_factory=list)
    profile: str = "local"
    # The gateways' key store when not the SQLite file in the home (production profile).
    key_store_url: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def state_path(home: Path) -> Path:
    return home / "run" / "up.json"


def write_state(home: Path, state: UpState) -> None:
    """Atomically replace the state file."""
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


def read_recorded_state(home: Path) -> UpState | None:
    """What the state file records, whether or not its supervisor still runs (None: no
    readable state file)."""
    try:
        raw = json.loads(state_path(home).read_text())
        return UpState(
            supervisor_pid=int(raw["supervisor_pid"]),
            services=[ServiceRecord(**item) for item in raw.get("services", [])],
            profile=str(raw.get("profile", "local")),
            key_store_url=raw.get("key_store_url"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_state(home: Path) -> UpState | None:
    """The state of a running supervisor, or None (none, or it is gone)."""
    state = read_recorded_state(home)
    return state if state is not None and pid_alive(state.supervisor_pid) else None


def clear_state(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(home).unlink()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
