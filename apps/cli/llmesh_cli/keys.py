"""``llmesh keys``: manage gateway API keys directly in the gateway's store (bootstrap).

The same code as AdminService's key methods (``llmesh_gateway.key_admin``), audited
in the gateway's audit log with the principal ``cli:<os user>``.

``llmesh keys create --role admin --tenant ops`` prints the new key once; use it as
``Bearer <key>`` (or ``LLMESH_API_KEY``) for the AdminService afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``llmesh keys {create,list,revoke}``."""
    parser = subparsers.add_parser(
        "keys",
        help="manage gateway API keys in the key store directly",
        description="Manage gateway API keys directly in the gateway's store (no gateway "
        "needed). The store is the gateway's: --store-url, else LLMESH_GATEWAY_STORE_URL, "
        "else the PostgreSQL of a running `llmesh up --profile production` in the data "
        "dir, else <data dir>/gateway.db.",
    )
    parser.add_argument("--store-url", help="sqlite:///path or postgresql://...")
    parser.add_argument("--data-dir", help="gateway data directory (default ~/.llmesh)")
    parser.add_argument("--config", help="gateway YAML/JSON settings file")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--name", default="bootstrap", help="human name (default bootstrap)")
    create.add_argument("--role", choices=["user", "admin"], default="user")
    create.add_argument("--tenant", required=True, help="tenant namespace: [a-z0-9_-]{1,64}")
    create.add_argument("--ttl-seconds", type=int, default=0, help="lifetime; 0 for never")
    create.add_argument("--json", action="store_true", help="print JSON")
    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--include-revoked", action="store_true")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    parser.set_defaults(func=_run)


def _store_url(args: argparse.Namespace) -> str:
    import os

    from llmesh.kernel.config import load_settings
    from llmesh_cli.supervisor.state import read_state
    from llmesh_cli.up import default_home
    from llmesh_gateway.settings import GatewaySettings

    if not (args.store_url or args.config or os.environ.get("LLMESH_GATEWAY_STORE_URL")):
        # A running `llmesh up --profile production` keeps the keys in its PostgreSQL.
        home = Path(args.data_dir).expanduser() if args.data_dir else default_home()
        state = read_state(home)
        if state is not None and state.key_store_url:
            return state.key_store_url
    settings = load_settings(
        GatewaySettings, args.config, store_url=args.store_url, data_dir=args.data_dir
    )
    return settings.resolved_store_url


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return f"{seconds!r} (out of range)"


async def _main(args: argparse.Namespace) -> int:
    from llmesh.kernel.errors import LlmeshError
    from llmesh_gateway import key_admin
    from llmesh_gateway.apikeys import ApiKeyManager
    from llmesh_gateway.audit import AuditLog
    from llmesh_gateway.store_factory import open_store

    store = await open_store(_store_url(args))
    keys = ApiKeyManager(store, cache_ttl_s=0)
    audit = AuditLog(store)  # the same audit log as the gateway's; flushed before exit
    try:
        if args.action == "create":
            async with key_admin.cli_call(audit, key_admin.CREATE):
                created = await key_admin.create_key(
                    keys,
                    name=args.name,
                    role=args.role,
                    tenant=args.tenant,
                    ttl_s=args.ttl_seconds,
                )
            record = created.record
            if args.json:
                print(json.dumps({"api_key": created.api_key, "key_id": record.key_id}))
            else:
                print(created.api_key)
                print(
                    f"key id {record.key_id}, role {record.role}, tenant {record.tenant}, "
                    f"expires {_when(record.expires_at)} (the key is not shown again)",
                    file=sys.stderr,
                )
        elif args.action == "list":
            async with key_admin.cli_call(audit, key_admin.LIST):
                records = await key_admin.list_keys(
                    keys, after_seq=0, limit=100_000, include_revoked=args.include_revoked
                )
            rows = [
                {
                    "key_id": r.key_id,
                    "name": r.name,
                    "role": r.role,
                    "tenant": r.tenant,
                    "created_at": _when(r.created_at),
                    "expires_at": _when(r.expires_at),
                    "revoked_at": _when(r.revoked_at),
                    "fingerprint": r.fingerprint,
                }
                for r in records
            ]
            if args.json:
                print(json.dumps(rows))
            else:
                for row in rows:
                    print("  ".join(f"{k}={v}" for k, v in row.items()))
        else:
            async with key_admin.cli_call(audit, key_admin.REVOKE):
                record = await key_admin.revoke_key(keys, args.key_id)
            print(f"revoked {record.key_id} at {_when(record.revoked_at)}")
    except LlmeshError as exc:
        print(f"llmesh keys: {exc}", file=sys.stderr)
        return 2
    finally:
        await audit.close()
        await store.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    from llmesh.kernel.config import ConfigError

    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:
        print(f"llmesh keys: {exc}", file=sys.stderr)
        return 2
