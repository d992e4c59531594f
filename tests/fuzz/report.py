"""Figures of a fuzz or security run, merged into the JSON file named by
``LLMESH_FUZZ_REPORT`` (``make fuzz`` sets it; unset: nothing is written)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def record(section: str, figures: dict[str, Any]) -> None:
    """Store ``figures`` under ``section`` in the report file, if one is asked for."""
    name = os.environ.get("LLMESH_FUZZ_REPORT")
    if not name:
        return
    path = Path(name)
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data[section] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
