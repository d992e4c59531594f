"""Typed settings of the gateway (env prefix ``LLMESH_GATEWAY_``, nested ``__``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from llmesh.kernel.config import ServiceSettings, service_settings_config

DEFAULT_PORT = 50051


class JwtSettings(BaseModel):
    """JWT verification; unset key files disable JWTs (API keys only)."""

    hs256_secret_file: Path | None = None
    rs256_public_key_file: Path | None = None
    jwks_file: Path | None = None
    audience: str | None = None
    issuer: str | None = None
    role_claim: str = "role"
    tenant_claim: str = "tenant"
    leeway_s: float = Field(default=5.0, ge=0, le=300)

    @model_validator(mode="after")
    def _files_exist(self) -> JwtSettings:
        for name in ("hs256_secret_file", "rs256_public_key_file", "jwks_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self


class RateLimitSettings(BaseModel):
    """Per-principal limits; 0 disables one. ``redis`` shares them between replicas."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    redis_timeout_s: float = Field(default=0.25, gt=0, le=10)
    fail_open: bool = True
    """When Redis fails: True admits the call, False refuses it (UNAVAILABLE)."""
    requests_per_minute: float = Field(default=600.0, ge=0)
    generations_per_minute: float = Field(default=120.0, ge=0)
    tokens_per_minute: float = Field(default=60000.0, ge=0)
    concurrent_streams: int = Field(default=8, ge=0)
    burst_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _redis_url(self) -> RateLimitSettings:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("redis_url is required when backend is redis")
        return self


class RoutingSettings(BaseModel):
    """Failover, retry budget, circuit breakers and session affinity."""

    max_attempts: int = Field(default=3, ge=1, le=10)
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)
    retry_budget_reserve: float = Field(default=10.0, ge=0)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=5.0, gt=0)
    session_affinity: bool = True


class ChatSettings(BaseModel):
    """How much of a ``Chat`` call's deadline its memory calls may use.

    Before generating, the idempotency-key lookup, the history and the recall run in
    parallel, each with ``min(context_share x remaining, context_cap_s)``: a hung memory
    service costs a turn that much (recall is then left out, marked degraded; a missing
    history or key lookup fails the turn with UNAVAILABLE), never the whole deadline.
    The append after generation gets ``min(append_share x remaining, append_cap_s)``.
    """

    context_share: float = Field(default=0.2, gt=0, le=1)
    context_cap_s: float = Field(default=1.5, gt=0, le=60)
    append_share: float = Field(default=0.5, gt=0, le=1)
    append_cap_s: float = Field(default=3.0, gt=0, le=60)
    # Where recalled memories go in the prompt, and recall's threshold when a request
    # leaves recall.min_score at 0: chosen on bench/memory_use (docs/memory.md): with
    # SmolLM2-135M, context + 0.4 answered 88 % of the dev set (79-88 % at 0, 52 % with
    # the system layout) and 75 % of the held-out set.
    memory_layout: Literal["context", "system"] = "context"
    recall_min_score: float = Field(default=0.4, ge=0, le=1)


class AuditSettings(BaseModel):
    """The audit queue: calls put events on it, one background loop writes it in batches.

    Beyond ``queue_size`` queued events new ones are dropped, counted in the
    ``gateway.audit.dropped`` metric and reported in the log at most once per
    ``drop_log_interval_s``; a graceful stop writes everything queued.
    """

    queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    batch_size: int = Field(default=500, ge=1, le=10_000)
    flush_interval_s: float = Field(default=0.5, gt=0, le=60)
    drop_log_interval_s: float = Field(default=10.0, gt=0, le=3600)


class GatewaySettings(ServiceSettings):
    """Settings of ``llmesh serve gateway``; every field is also an env variable."""

    model_config = service_settings_config("gateway")

    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    registry_address: str = "127.0.0.1:50052"
    memory_address: str = "127.0.0.1:50053"
    store_url: str | None = None
    """``sqlite:///path`` or ``postgresql://...``; default ``<data_dir>/gateway.db``."""
    key_cache_ttl_s: float = Field(default=2.0, ge=0, le=300)
    """How long a verified key record is reused before the store is asked again
    (bounds how late another replica sees a revocation)."""
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'gateway.db'}"
