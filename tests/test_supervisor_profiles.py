"""The production profile's plan (no process started): backing servers first and gating,
replicas wired registry i mod 2, every service on Redis/PostgreSQL, default ports."""

from __future__ import annotations

from pathlib import Path

from llmesh_cli.supervisor.plan import PlanOptions
from llmesh_cli.supervisor.profiles import (
    GATEWAY_DB,
    build_profile,
    profile_children,
    profile_metrics_ports,
    profile_ports,
)

SERVICES = ("registry", "inference", "registrar", "memory", "gateway")


def flag(argv: tuple[str, ...], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_production_plan(tmp_path: Path) -> None:
    ports = profile_ports("production", SERVICES)
    assert ports == {
        "redis": 50056, "postgres": 50057, "registry": 50052, "registry-1": 50062,
        "inference": 50054, "inference-1": 50064, "registrar": 50055, "registrar-1": 50065,
        "memory": 50053, "gateway": 50051, "gateway-1": 50061,
    }  # fmt: skip
    assert profile_metrics_ports("production", SERVICES)["gateway-1"] == 9471
    assert "redis" not in profile_metrics_ports("production", SERVICES)
    options = PlanOptions(
        home=tmp_path,
        models_dir=tmp_path / "m",
        default_model="tiny",
        services=SERVICES,
        ports=ports,
        env={"gateway-1": {"LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "5"}},
    )
    profile = build_profile("production", options)
    specs = {s.name: s for s in profile.specs}
    assert list(specs) == profile_children("production", SERVICES)
    assert [n for n, s in specs.items() if s.gate] == ["redis", "postgres"]
    assert (specs["redis"].probe, specs["postgres"].probe) == ("redis", "postgres")
    redis_url = "redis://127.0.0.1:50056/0"
    assert flag(specs["redis"].argv, "--port") == ["50056"]
    assert flag(specs["postgres"].argv, "--database") == ["llmesh_memory", GATEWAY_DB]

    # Gateway i watches registry i mod 2; registrar i registers with registry i mod 2.
    assert flag(specs["gateway"].argv, "--registry") == ["127.0.0.1:50052"]
    assert flag(specs["gateway-1"].argv, "--registry") == ["127.0.0.1:50062"]
    assert flag(specs["registrar"].argv, "--registry") == ["127.0.0.1:50052"]
    assert flag(specs["registrar-1"].argv, "--registry") == ["127.0.0.1:50062"]
    assert flag(specs["registrar-1"].argv, "--worker") == ["127.0.0.1:50064"]
    assert flag(specs["gateway-1"].argv, "--memory") == ["127.0.0.1:50053"]

    for name in ("registry", "registry-1"):
        assert specs[name].env["LLMESH_REGISTRY_BACKEND"] == "redis"
        assert specs[name].env["LLMESH_REGISTRY_REDIS_URL"] == redis_url
    for name in ("gateway", "gateway-1"):
        env = specs[name].env
        assert env["LLMESH_GATEWAY_RATE_LIMIT__BACKEND"] == "redis"
        assert env["LLMESH_GATEWAY_RATE_LIMIT__REDIS_URL"] == redis_url
        assert env["LLMESH_GATEWAY_STORE_URL"] == profile.key_store_url
    # The caller's environment per child goes over the profile's.
    assert specs["gateway-1"].env["LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE"] == "5"
    memory = specs["memory"].env
    assert memory["LLMESH_MEMORY_STORE"] == "postgres"
    assert memory["LLMESH_MEMORY_POSTGRES_DSN"].endswith(":50057/llmesh_memory")
    assert memory["LLMESH_MEMORY_REDIS_URL"] == redis_url
    assert profile.key_store_url == f"postgresql://postgres@127.0.0.1:50057/{GATEWAY_DB}"


def test_local_profile_is_the_plain_plan(tmp_path: Path) -> None:
    options = PlanOptions(home=tmp_path, models_dir=tmp_path, default_model="t", services=SERVICES)
    profile = build_profile("local", options)
    assert [s.name for s in profile.specs] == list(SERVICES)
    assert profile.key_store_url is None
    assert not any(s.gate for s in profile.specs)


async def test_a_backing_server_that_never_answers_holds_back_the_services(
    tmp_path: Path,
) -> None:
    """A gate child (Redis here, a process that never listens) is waited for; when it
    does not become ready, the children after it are not started at all."""
    import sys

    from llmesh.testing.servers import free_port
    from llmesh_cli.supervisor.plan import ServiceSpec
    from llmesh_cli.supervisor.supervisor import Supervisor

    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    specs = [
        ServiceSpec(
            name="redis", argv=sleeper, port=free_port(), log_file=tmp_path / "redis.log",
            start_timeout_s=0.5, kind="redis", probe="redis", gate=True,
        ),
        ServiceSpec(
            name="registry", argv=sleeper, port=free_port(), log_file=tmp_path / "r.log",
            start_timeout_s=0.5, kind="registry",
        ),
    ]  # fmt: skip
    lines: list[str] = []
    supervisor = Supervisor(specs, home=tmp_path, say=lines.append)
    try:
        assert await supervisor.start() == {"redis": False, "registry": False}
        records = {r.name: r for r in supervisor.records()}
        assert records["redis"].pid is not None and records["redis"].probe == "redis"
        assert records["registry"].pid is None and records["registry"].status == "not started"
        assert any("redis not ready" in line for line in lines)
    finally:
        await supervisor.shutdown()
