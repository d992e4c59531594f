"""``llmesh remember`` / ``llmesh recall`` (and how the client commands report errors)
against a real gateway and memory service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmesh.testing.inprocess import serving
from llmesh.testing.servers import free_port
from llmesh_cli.main import main as cli
from llmesh_memory import wiring as memory_wiring
from llmesh_memory.settings import MemorySettings


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[str, str, str]]:
    """Memory (SQLite, keyword-only) behind a real gateway; yields target and two keys."""
    from llmesh_gateway import wiring as gateway_wiring
    from llmesh_gateway.auth import AuthGuard
    from llmesh_gateway.settings import GatewaySettings

    mem_settings = MemorySettings(port=0, sqlite_path=tmp_path / "m.db", embedder_target="")
    async with serving(
        mem_settings,
        memory_wiring.SERVICE_NAMES,
        lambda host: memory_wiring.wire(host, mem_settings),
    ) as memory:
        gw_settings = GatewaySettings(
            port=0,
            data_dir=tmp_path,
            registry_address=f"127.0.0.1:{free_port()}",
            memory_address=memory.address,
        )
        auth = AuthGuard()
        async with serving(
            gw_settings,
            gateway_wiring.SERVICE_NAMES,
            lambda host: gateway_wiring.wire(host, gw_settings, auth),
            guards=[auth],
        ) as gateway:
            alice = await gateway.parts.keys.create(name="alice", role="user", tenant="acme")
            bob = await gateway.parts.keys.create(name="bob", role="user", tenant="globex")
            yield gateway.address, alice.api_key, bob.api_key


async def run_cli(args: list[str], key: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("LLMESH_API_KEY", key)
    return await asyncio.to_thread(cli, args)


async def test_remember_then_recall_through_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with mesh(tmp_path) as (target, alice, bob):
        t = ["--target", target]
        assert (
            await run_cli(
                [
                    "remember",
                    "Deploys to db-replica-07 need a DBA sign-off",
                    "--meta",
                    "team=db",
                    *t,
                ],
                alice,
                monkeypatch,
            )
            == 0
        )
        memory_id = capsys.readouterr().out.split()[0]
        assert memory_id.startswith("mem_")
        assert (
            await run_cli(
                ["remember", "deploys to DB-REPLICA-07 need a dba sign-off", "--json", *t],
                alice,
                monkeypatch,
            )
            == 0
        )
        reply = json.loads(capsys.readouterr().out)
        assert reply["id"] == memory_id and reply["duplicate"] is True
        assert await run_cli(["recall", "db-replica-07", "--json", *t], alice, monkeypatch) == 0
        hits = json.loads(capsys.readouterr().out)["hits"]
        assert [h["memory"]["id"] for h in hits] == [memory_id]
        assert await run_cli(["recall", "db-replica-07", "-k", "3", *t], alice, monkeypatch) == 0
        captured = capsys.readouterr()
        assert memory_id in captured.out and "degraded" in captured.err
        # Another tenant's key sees nothing of it.
        assert await run_cli(["recall", "db-replica-07", "--json", *t], bob, monkeypatch) == 0
        assert json.loads(capsys.readouterr().out).get("hits", []) == []
        # Errors are reported, with a non-zero exit.
        assert await run_cli(["recall", "x", "-k", "500", *t], alice, monkeypatch) == 1
        assert "INVALID_ARGUMENT" in capsys.readouterr().err
        assert await run_cli(["recall", "x", *t], "not-a-key", monkeypatch) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err


async def test_client_errors_print_precisely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused call prints its code, message, reason and each field violation on a
    line of its own, and exits 1: no traceback."""
    async with mesh(tmp_path) as (target, alice, _bob):
        t = ["--target", target, "--timeout", "5"]
        too_long = "x" * 70_000
        assert await run_cli(["generate", too_long, *t], alice, monkeypatch) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert lines[0].startswith("llmesh generate: INVALID_ARGUMENT: ")
        assert "  reason: INVALID_FIELD" in lines
        fields = [line for line in lines if line.startswith("  field ")]
        assert len(fields) == 1 and re.fullmatch(
            r"  field (input\.)?prompt: must be at most 65536 bytes", fields[0]
        ), lines
        # Nothing listens there: UNAVAILABLE, promptly (the kernel deadline scope), exit 1.
        dead = ["--target", f"127.0.0.1:{free_port()}", "--timeout", "2"]
        assert await run_cli(["recall", "x", *dead], alice, monkeypatch) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert err.startswith("llmesh recall: UNAVAILABLE: ")
