"""Profiles of ``llmesh up``: ``local`` (one of each, embedded stores) and ``production``.

The production profile runs on one machine what the Kubernetes production overlay runs
(``deploy/k8s/overlays/production``): two gateways sharing rate limits in Redis, two
registries on the Redis backend, two inference workers each with its registrar, memory
on PostgreSQL + pgvector with the Redis session cache, API keys and the audit log in
PostgreSQL. Redis (``redis-server``) and PostgreSQL (from the ``pgserver`` package) are
children of the supervisor like the services, started first and gating the rest.

The gateway takes one registry address, so gateway i watches registry i mod 2, and
registrar i registers with registry i mod 2: a worker is seen by a gateway whose
registry it never talked to only through the registries' shared Redis.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from llmesh_cli.supervisor.plan import (
    ALL_SERVICES,
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    PlanOptions,
    ServiceSpec,
    build_plan,
    child_names,
)
from llmesh_cli.supervisor.postgres import postgres_bin

PROFILES: tuple[str, ...] = ("local", "production")
PRODUCTION_REPLICAS: dict[str, int] = {"gateway": 2, "registry": 2}
PRODUCTION_WORKERS = 2
BACKING: tuple[str, ...] = ("redis", "postgres")
BACKING_PORTS: dict[str, int] = {"redis": 50056, "postgres": 50057}
MEMORY_DB = "llmesh_memory"
GATEWAY_DB = "llmesh_gateway"
# Replica i of a service listens on its default port + 10 i (metrics likewise).
REPLICA_PORT_STEP = 10


@dataclass(frozen=True)
class Backing:
    """Where the production profile's Redis and PostgreSQL listen."""

    redis_port: int
    postgres_port: int

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def postgres_url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.postgres_port}/{database}"


@dataclass(frozen=True)
class Profile:
    """The children of one profile and what an operator needs to reach them."""

    name: str
    specs: list[ServiceSpec]
    # The gateways' key store (``llmesh keys --store-url``), when not the default SQLite file.
    key_store_url: str | None = None


def profile_children(profile: str, services: Sequence[str]) -> list[str]:
    """Every child a profile runs, backing servers first."""
    if profile == "production":
        return [*BACKING, *child_names(services, PRODUCTION_WORKERS, PRODUCTION_REPLICAS)]
    return child_names(services)


def default_ports(names: Sequence[str], base: Mapping[str, int]) -> dict[str, int]:
    """Ports of ``names``: the service's default, + 10 per replica index."""
    ports: dict[str, int] = {}
    for name in names:
        kind, _, index = name.partition("-")
        if kind in base:
            ports[name] = base[kind] + REPLICA_PORT_STEP * (int(index) if index else 0)
    return ports


def missing_backing() -> list[str]:
    """What the production profile needs and this machine lacks, said so it can be fixed."""
    missing = []
    if shutil.which("redis-server") is None:
        missing.append(
            "redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server; "
            "macOS: brew install redis)"
        )
    if postgres_bin() is None:
        missing.append(
            "PostgreSQL binaries not found: install the pgserver package "
            "(pip install 'llmesh[production-local]'; `make setup` installs it)"
        )
    return missing


def backing_specs(home: Path, backing: Backing) -> list[ServiceSpec]:
    """Redis and PostgreSQL as supervised children (data under ``<home>/production``)."""
    data = home / "production"
    logs = home / "logs"
    redis_dir = data / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    redis_argv = (
        shutil.which("redis-server") or "redis-server",
        "--port", str(backing.redis_port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", str(redis_dir),
    )  # fmt: skip
    postgres_argv = (
        sys.executable, "-m", "llmesh_cli.supervisor.postgres",
        "--data-dir", str(data / "postgres"), "--port", str(backing.postgres_port),
        "--database", MEMORY_DB, "--database", GATEWAY_DB,
    )  # fmt: skip
    return [
        ServiceSpec(
            name="redis",
            argv=redis_argv,
            port=backing.redis_port,
            log_file=logs / "redis.log",
            start_timeout_s=30.0,
            kind="redis",
            probe="redis",
            gate=True,
        ),
        ServiceSpec(
            name="postgres",
            argv=postgres_argv,
            port=backing.postgres_port,
            log_file=logs / "postgres.log",
            start_timeout_s=120.0,  # initdb on first run
            kind="postgres",
            probe="postgres",
            gate=True,
        ),
    ]


def backing_env(names: Sequence[str], backing: Backing) -> dict[str, dict[str, str]]:
    """The settings that put each service on the shared Redis and PostgreSQL."""
    redis = backing.redis_url
    by_kind = {
        "registry": {"LLMESH_REGISTRY_BACKEND": "redis", "LLMESH_REGISTRY_REDIS_URL": redis},
        "gateway": {
            "LLMESH_GATEWAY_RATE_LIMIT__BACKEND": "redis",
            "LLMESH_GATEWAY_RATE_LIMIT__REDIS_URL": redis,
            "LLMESH_GATEWAY_STORE_URL": backing.postgres_url(GATEWAY_DB),
        },
        "memory": {
            "LLMESH_MEMORY_STORE": "postgres",
            "LLMESH_MEMORY_POSTGRES_DSN": backing.postgres_url(MEMORY_DB),
            "LLMESH_MEMORY_REDIS_URL": redis,
        },
    }
    return {name: by_kind[name.split("-", 1)[0]] for name in names if name.split("-")[0] in by_kind}


def production_profile(options: PlanOptions) -> Profile:
    """The production topology: ``options`` with two gateways, two registries and two
    workers, the services on Redis and PostgreSQL, those two started first.

    ``options.ports`` must hold ``redis`` and ``postgres`` too; ``options.env`` (per
    child) is applied over the profile's settings.
    """
    backing = Backing(options.ports["redis"], options.ports["postgres"])
    options = replace(options, workers=PRODUCTION_WORKERS, replicas=dict(PRODUCTION_REPLICAS))
    names = child_names(options.services, options.workers, options.replicas)
    env = backing_env(names, backing)
    for name, extra in options.env.items():
        env[name] = {**env.get(name, {}), **extra}
    specs = build_plan(replace(options, env=env))
    return Profile(
        name="production",
        specs=[*backing_specs(options.home, backing), *specs],
        key_store_url=backing.postgres_url(GATEWAY_DB) if "gateway" in names else None,
    )


def local_profile(options: PlanOptions) -> Profile:
    """One of each service, embedded stores (SQLite, in-process registry and limits)."""
    return Profile(name="local", specs=build_plan(options))


def build_profile(profile: str, options: PlanOptions) -> Profile:
    if profile == "production":
        return production_profile(options)
    if profile == "local":
        return local_profile(options)
    raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")


def profile_ports(profile: str, services: Sequence[str] = ALL_SERVICES) -> dict[str, int]:
    """Default ports of every child of ``profile``."""
    return default_ports(profile_children(profile, services), {**DEFAULT_PORTS, **BACKING_PORTS})


def profile_metrics_ports(profile: str, services: Sequence[str] = ALL_SERVICES) -> dict[str, int]:
    """Default Prometheus ports of the services of ``profile`` (none for Redis/PostgreSQL)."""
    return default_ports(profile_children(profile, services), DEFAULT_METRICS_PORTS)
