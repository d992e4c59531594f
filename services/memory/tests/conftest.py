"""Fixtures of the memory service tests: one store per backend, a real MiniLM embedder."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from llmesh.testing.servers import RedisServer, free_port
from llmesh_memory.store.base import MemoryStore
from llmesh_memory.store.postgres import PostgresStore
from llmesh_memory.store.redis_cache import RedisSessionCache
from llmesh_memory.store.sqlite import SqliteStore

BACKENDS = ["sqlite", "postgres", "postgres+redis", "sqlite+redis"]


def make_store(
    backend: str,
    tmp_path: Path,
    dsn_factory: Callable[[], str] | None,
    redis_url: str | None,
) -> MemoryStore:
    """A fresh, empty store of ``backend``."""
    base: MemoryStore
    if backend.startswith("postgres"):
        assert dsn_factory is not None
        base = PostgresStore(dsn_factory(), max_size=8, exact_search_max_rows=1000)
    else:
        base = SqliteStore(tmp_path / "memory.db")
    if backend.endswith("+redis"):
        assert redis_url is not None
        base = RedisSessionCache(base, redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    return base


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MemoryStore]:
    """A started store per backend (PostgreSQL: a fresh database each)."""
    backend = request.param
    dsn_factory = (
        request.getfixturevalue("postgres_dsn_factory") if backend.startswith("postgres") else None
    )
    redis: RedisServer | None = (
        request.getfixturevalue("redis_server") if backend.endswith("+redis") else None
    )
    s = make_store(backend, tmp_path, dsn_factory, redis.url if redis else None)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


MINILM_SERVER = Path(__file__).resolve().parent / "minilm_server.py"


@contextlib.contextmanager
def minilm_server(port: int | None = None) -> Iterator[str]:
    """A child process serving real MiniLM ``Embed`` on ``port``; yields its target."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, str(MINILM_SERVER), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until READY (or exit)
        if b"READY" not in line:
            raise RuntimeError(f"minilm server failed to start: {line!r}")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def minilm_target() -> Iterator[str]:
    """host:port of a real MiniLM embedder shared by the whole test session."""
    with minilm_server() as target:
        yield target


@pytest.fixture
def start_minilm() -> Callable[[int | None], contextlib.AbstractContextManager[str]]:
    """Starts a real MiniLM embedder on a given port: ``with start_minilm(port) as target``."""
    return minilm_server
