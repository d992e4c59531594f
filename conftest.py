"""Session-wide fixtures shared by every test package: throwaway servers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmesh.testing.servers import PostgresServer, RedisServer, start_postgres, start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway redis-server per test session; tests use distinct key prefixes or flush."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL 16 + pgvector per test session."""
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn_factory(postgres_server: PostgresServer) -> Callable[[], str]:
    """Returns a function creating a fresh database per call (one per test)."""

    def create() -> str:
        return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")

    return create


TINY_MODEL_NAME = "tiny-llama-test"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the deterministic test model ``tiny-llama-test``.

    Created once per session (``llmesh_inference.tiny.init_tiny(size="test")``);
    pass it as ``--models-dir`` and ``TINY_MODEL_NAME`` as ``--default-model``.
    """
    from llmesh_inference.tiny import init_tiny

    models = tmp_path_factory.mktemp("models")
    init_tiny(models / TINY_MODEL_NAME, size="test")
    return models
