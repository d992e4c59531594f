"""The local-mesh plan: one description of children, flags and environment shared by
``llmesh up``, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from llmesh_cli.supervisor.mesh import mesh_options
from llmesh_cli.supervisor.plan import DEFAULT_PORTS, PlanOptions, build_plan, child_names


def flag(argv: tuple[str, ...], name: str) -> list[str]:
    """Every value given to ``name`` (argparse keeps the last)."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def test_the_default_plan_is_llmesh_up(tmp_path: Path) -> None:
    plan = build_plan(PlanOptions(home=tmp_path, models_dir=tmp_path / "m", default_model="tiny"))
    assert [s.name for s in plan] == [
        "registry", "inference", "registrar", "memory", "gateway", "openai",
    ]  # fmt: skip
    by_name = {s.name: s for s in plan}
    assert {n: s.port for n, s in by_name.items()} == DEFAULT_PORTS
    assert flag(by_name["registrar"].argv, "--worker") == ["127.0.0.1:50054"]
    # Memory finds embedders through the registry the registrars keep.
    assert flag(by_name["memory"].argv, "--embedder-registry") == ["127.0.0.1:50052"]
    assert flag(by_name["memory"].argv, "--embedder") == []
    assert flag(by_name["gateway"].argv, "--memory") == ["127.0.0.1:50053"]
    assert flag(by_name["gateway"].argv, "--metrics-port") == ["9461"]
    assert by_name["inference"].env == {"LLMESH_INFERENCE_LOG_LEVEL": "INFO"}
    # The OpenAI door (HTTP on 8080) calls the gateway and is probed over HTTP.
    assert flag(by_name["openai"].argv, "--gateway") == ["127.0.0.1:50051"]
    assert flag(by_name["openai"].argv, "--metrics-port") == ["9466"]
    assert by_name["openai"].probe == "http" and by_name["gateway"].probe == "grpc"


def test_several_workers_extra_flags_and_environment(tmp_path: Path) -> None:
    options = mesh_options(
        tmp_path,
        models_dir=tmp_path / "m",
        default_model="tiny",
        services=("registry", "inference", "registrar", "gateway"),
        workers=2,
        metrics=("gateway",),
        args={"registrar-1": ["--worker-id", "second"]},
        env={"inference-1": {"LLMESH_INFERENCE_MAX_BATCH_SIZE": "4"}},
    )
    plan = build_plan(options)
    names = ["registry", "inference", "inference-1", "registrar", "registrar-1", "gateway"]
    assert [s.name for s in plan] == names == child_names(options.services, 2)
    by_name = {s.name: s for s in plan}
    assert len({s.port for s in plan}) == len(plan)  # free ports, all distinct
    # Each registrar looks after its own worker; an extra flag comes last, so it wins.
    second = by_name["registrar-1"].argv
    assert flag(second, "--worker") == [by_name["inference-1"].address]
    assert flag(second, "--worker-id")[-1] == "second"
    assert by_name["inference-1"].kind == "inference"
    worker = by_name["inference-1"].argv
    assert worker[worker.index("serve") + 1] == "inference"
    assert by_name["inference-1"].env["LLMESH_INFERENCE_MAX_BATCH_SIZE"] == "4"
    # No memory in this mesh: the gateway is not pointed at one; metrics only where asked.
    assert flag(by_name["gateway"].argv, "--memory") == []
    assert flag(by_name["registry"].argv, "--metrics-port") == []
    assert len(flag(by_name["gateway"].argv, "--metrics-port")) == 1


def test_a_worker_without_a_text_model(tmp_path: Path) -> None:
    options = mesh_options(
        tmp_path, models_dir=tmp_path, default_model="", services=("inference", "memory")
    )
    worker, memory = build_plan(options)
    assert flag(worker.argv, "--default-model") == []
    assert flag(memory.argv, "--embedder") == [worker.address]
