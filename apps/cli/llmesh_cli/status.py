"""``llmesh status``: the services ``llmesh up`` runs, their health, and the workers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``llmesh status``."""
    parser = subparsers.add_parser(
        "status",
        help="health of the local services and the workers each registry and gateway sees",
        description="Print the services `llmesh up` runs (address, pid, health) and the "
        "inference workers each registry lists and, with an admin key, each gateway routes "
        "to. Exit code 0 when every service is SERVING.",
    )
    parser.add_argument(
        "--home", type=Path, help="data directory (default $LLMESH_HOME or ~/.llmesh)"
    )
    parser.add_argument("--registry", help="registry address (default: from llmesh up, or :50052)")
    parser.add_argument(
        "--api-key",
        help="admin key: also show the workers each gateway sees (env LLMESH_API_KEY)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from llmesh_cli.supervisor.report import status
    from llmesh_cli.up import default_home

    home = (args.home or default_home()).expanduser()
    key = args.api_key or os.environ.get("LLMESH_API_KEY") or None
    # The default ports are the default home's: never probed for another --home.
    probe_defaults = args.home is None or home == default_home().expanduser()
    return asyncio.run(
        status(
            home,
            registry=args.registry,
            as_json=args.json,
            api_key=key,
            probe_defaults=probe_defaults,
        )
    )
