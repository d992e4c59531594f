"""Typed settings of the registry (``LLMESH_REGISTRY_*``) and registrar (``LLMESH_REGISTRAR_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmesh.kernel.config import ServiceSettings, service_settings_config


class RegistrySettings(ServiceSettings):
    """Registry service settings."""

    model_config = service_settings_config("registry")

    port: int = Field(default=50052, ge=0, le=65535)
    # WatchWorkers streams are long-lived: without a client deadline they run an
    # hour (then the client resumes from its last revision); unary calls keep 30 s.
    max_deadline_s: float = Field(default=3600.0, gt=0)
    method_deadlines: dict[str, float] = Field(default_factory=lambda: {"WatchWorkers": 3600.0})
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "{llmesh-registry}"
    redis_timeout_s: float = Field(default=2.0, gt=0)
    lease_ttl_ms: int = Field(default=10_000, ge=100)
    evict_after_ms: int = Field(default=20_000, ge=0)
    sweep_interval_ms: int = Field(default=0, ge=0)
    history: int = Field(default=10_000, ge=10)
    watch_queue: int = Field(default=10_000, ge=10)
    readiness_interval_s: float = Field(default=1.0, gt=0)
    # A registry that starts without its state (in-memory backend) says it is warming
    # for this long, so watchers keep the workers they knew until the registrars have
    # registered again. Unset: one lease TTL, at least 5 s; 0: never.
    warmup_ms: int | None = Field(default=None, ge=0)
    # A keepalive on every quiet WatchWorkers stream this often (0: none), so that
    # watchers see a hung registry.
    watch_keepalive_ms: int = Field(default=1000, ge=0)
    # When the sweeper finds the registry itself stalled (frozen, starved), no lease
    # lapses for this long. Unset: one lease TTL; 0: off.
    stall_grace_ms: int | None = Field(default=None, ge=0)

    @property
    def effective_warmup_ms(self) -> int:
        """The warm-up of the in-memory backend after a start (0 for Redis: state kept)."""
        if self.backend == "redis":
            return 0
        if self.warmup_ms is not None:
            return self.warmup_ms
        return max(self.lease_ttl_ms, 5000)

    @property
    def effective_stall_grace_s(self) -> float:
        """How long the sweeper holds back after a stall of the registry."""
        grace_ms = self.lease_ttl_ms if self.stall_grace_ms is None else self.stall_grace_ms
        return grace_ms / 1000

    @property
    def effective_sweep_interval_s(self) -> float:
        """How often leases are checked: set, or a tenth of the TTL (25..1000 ms)."""
        if self.sweep_interval_ms:
            return self.sweep_interval_ms / 1000
        return min(1.0, max(0.025, self.lease_ttl_ms / 10_000))


class RegistrarSettings(ServiceSettings):
    """Registrar sidecar settings. It serves only health (for its own probes)."""

    model_config = service_settings_config("registrar")

    port: int = Field(default=50055, ge=0, le=65535)
    worker: str = "127.0.0.1:50054"
    registry: str = "127.0.0.1:50052"
    worker_id: str = ""
    advertise_address: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    probe_timeout_s: float = Field(default=1.0, gt=0)
    heartbeat_interval_s: float = Field(default=0.0, ge=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    registry_timeout_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _addresses(self) -> RegistrarSettings:
        for name in ("worker", "registry"):
            value = getattr(self, name)
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{name}: expected host:port, got {value!r}")
        return self
