"""Gateway settings and SQLite store edges: missing JWT key files, Redis without a URL,
an in-memory store (one connection for reads and writes), a file that is not a
database, calls after close, and a non-store error passing through the lane."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmesh.kernel.errors import LlmeshError, Unavailable
from llmesh_gateway.settings import JwtSettings, RateLimitSettings
from llmesh_gateway.store import ApiKeyRecord
from llmesh_gateway.store_sqlite import SqliteStore


def test_jwt_key_files_must_exist(tmp_path: Path) -> None:
    for name in ("hs256_secret_file", "rs256_public_key_file", "jwks_file"):
        with pytest.raises(ValidationError) as info:
            JwtSettings(**{name: tmp_path / "missing"})
        assert f"{name}: no such file {tmp_path / 'missing'}" in str(info.value)
    present = tmp_path / "present"
    present.write_text("x")
    assert JwtSettings(jwks_file=present).jwks_file == present


def test_redis_needs_a_url() -> None:
    with pytest.raises(ValidationError, match="redis_url is required when backend is redis"):
        RateLimitSettings(backend="redis")
    assert RateLimitSettings(backend="redis", redis_url="redis://x").redis_url == "redis://x"
    assert RateLimitSettings().backend == "memory"


def _record(key_id: str) -> ApiKeyRecord:
    return ApiKeyRecord(key_id, "n", "user", "t", 1.0, None, None, "fp", b"s", b"d")


async def test_an_in_memory_store_reads_what_it_wrote() -> None:
    store = await SqliteStore.open(":memory:")
    try:
        assert store._reader is store._writer
        await store.create_key(_record("k1"))
        found = await store.get_key("k1")
        assert found is not None and found.key_id == "k1"
        await store.ping()
    finally:
        await store.close()
    await store.close()  # a second close does nothing


async def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = await SqliteStore.open(str(tmp_path / "sub" / "gw.db"))
    await store.close()
    with pytest.raises(Unavailable, match="key store is closed"):
        await store.get_key("k")
    with pytest.raises(Unavailable, match="key store is closed"):
        await store.create_key(_record("k"))


async def test_a_lane_that_cannot_connect_is_a_mapped_store_error(tmp_path: Path) -> None:
    """The reader connects on the first read, during a request: a locked database there
    is UNAVAILABLE with RetryInfo (it escaped as a raw sqlite3 error: INTERNAL)."""
    store = await SqliteStore.open(str(tmp_path / "gw.db"))
    try:

        def locked() -> sqlite3.Connection:
            raise sqlite3.OperationalError("database is locked")

        store._reader._connect = locked  # type: ignore[method-assign]
        with pytest.raises(Unavailable) as info:
            await store.get_key("k")
        assert info.value.reason == "STORE_UNAVAILABLE"
        assert info.value.retry_after_s is not None
    finally:
        await store.close()


async def test_a_file_that_is_not_a_database_fails_to_open(tmp_path: Path) -> None:
    bad = tmp_path / "gw.db"
    bad.write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(LlmeshError) as info:
        await SqliteStore.open(str(bad))
    assert info.value.reason == "STORE_FAULT"


async def test_a_non_store_error_passes_through_the_lane(tmp_path: Path) -> None:
    store = await SqliteStore.open(str(tmp_path / "gw.db"))
    try:

        def boom(conn: object) -> None:
            raise KeyError("not a store failure")

        with pytest.raises(KeyError):
            await store._write(boom)
        await store.create_key(_record("k2"))  # the lane still works after a rollback
        assert await store.get_key("k2") is not None
    finally:
        await store.close()
