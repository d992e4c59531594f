"""In-process tests of ``llmesh keys`` (apps/cli/llmesh_cli/keys.py) on a SQLite key store:
create / list / revoke in text and JSON, refusals, and where the store is found."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest

from llmesh_cli import keys
from llmesh_cli.supervisor.state import UpState, write_state


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    keys.register(parser.add_subparsers())
    return parser.parse_args(["keys", *argv])


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("LLMESH_GATEWAY_STORE_URL", raising=False)
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def _run(store: str, *argv: str) -> int:
    args = _parse("--store-url", store, *argv)
    result: int = args.func(args)
    return result


def test_create_list_revoke(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(store, "create", "--tenant", "ops", "--role", "admin", "--name", "boot") == 0
    out = capsys.readouterr()
    api_key = out.out.strip()
    assert api_key and "\n" not in api_key
    assert "role admin, tenant ops, expires - (the key is not shown again)" in out.err

    assert _run(store, "create", "--tenant", "t1", "--ttl-seconds", "3600", "--json") == 0
    created = json.loads(capsys.readouterr().out)
    assert set(created) == {"api_key", "key_id"} and created["api_key"] != api_key

    assert _run(store, "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    by_tenant = {row["tenant"]: row for row in rows}
    assert set(by_tenant) == {"ops", "t1"}
    assert by_tenant["ops"]["role"] == "admin" and by_tenant["ops"]["name"] == "boot"
    assert by_tenant["ops"]["expires_at"] == "-" and by_tenant["ops"]["revoked_at"] == "-"
    assert by_tenant["t1"]["expires_at"].endswith("Z")
    assert all(api_key not in json.dumps(row) for row in rows)  # never the secret

    key_id = created["key_id"]
    assert _run(store, "revoke", key_id) == 0
    assert capsys.readouterr().out.startswith(f"revoked {key_id} at ")
    assert _run(store, "list") == 0
    text = capsys.readouterr().out
    assert "tenant=ops" in text and key_id not in text  # revoked keys are hidden
    assert _run(store, "list", "--include-revoked") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if key_id in x)
    assert "revoked_at=-" not in line


def test_refusals_exit_2_with_the_reason(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(store, "revoke", "no-such-key") == 2
    assert capsys.readouterr().err.startswith("llmesh keys: ")
    assert _run(store, "create", "--tenant", "Not A Tenant!") == 2
    assert "tenant" in capsys.readouterr().err


def test_a_bad_store_url_is_a_config_error(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse("--config", str(tmp_path / "missing.yaml"), "list")
    assert args.func(args) == 2
    assert capsys.readouterr().err.startswith("llmesh keys: ")


def test_when() -> None:
    assert keys._when(None) == "-"
    assert keys._when(0) == "1970-01-01T00:00:00Z"
    assert keys._when(1e20) == "1e+20 (out of range)"


def test_store_url_of_a_running_production_mesh(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    pg = "postgresql://127.0.0.1:5999/llmesh_gateway"
    write_state(home, UpState(supervisor_pid=os.getpid(), key_store_url=pg))
    args: Any = _parse("--data-dir", str(home), "list")
    assert keys._store_url(args) == pg
    # explicit settings win over the running mesh's
    args = _parse("--data-dir", str(home), "--store-url", store, "list")
    assert keys._store_url(args) == store
    monkeypatch.setenv("LLMESH_GATEWAY_STORE_URL", store)
    assert keys._store_url(_parse("--data-dir", str(home), "list")) == store


def test_store_url_defaults_to_the_home_sqlite(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    write_state(home, UpState(supervisor_pid=os.getpid()))  # local profile: no URL
    url = keys._store_url(_parse("--data-dir", str(home), "list"))
    assert url.startswith("sqlite:") and url.endswith("gateway.db")
    assert str(home) in url
    monkeypatch.setenv("LLMESH_HOME", str(tmp_path / "other"))
    url = keys._store_url(_parse("list"))  # no running mesh in the default home
    assert url.startswith("sqlite:") and "gateway.db" in url
