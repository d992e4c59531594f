"""The OpenAI-door e2e mesh: the whole `llmesh up` plan (registry, an MLX inference worker
with the tiny model and its registrar, memory, gateway, and the OpenAI HTTP door), each
its own process, exporting spans over OTLP to a collector in the test process.

The gateway runs with a low cheap-call limit (30 requests/minute, 10 s burst: 5 calls
per key at once) so the rate-limit test can reach it; other tests use their own keys.
The worker pauses 5 ms after each decode step (decode_delay_ms), so a long generation
outlasts a deadline of a few seconds on any machine (the mid-stream failure tests).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from e2etest.meshes import MODEL, PACED_WORKER, create_user_keys, otlp_env
from llmesh.testing.rpc import Collector
from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
from llmesh_cli.supervisor.plan import ALL_SERVICES, build_plan

LLMESH = [sys.executable, "-m", "llmesh_cli.main"]
USERS = {
    "alice": "acme", "bob": "globex", "carol": "acme", "rita": "ratelimited", "dave": "initech",
}  # fmt: skip


@dataclass
class OpenAIMesh:
    local: LocalMesh
    collector: Collector
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.local.address('openai')}/v1"

    @property
    def gateway(self) -> str:
        return self.local.address("gateway")

    @property
    def worker(self) -> str:
        return self.local.address("inference")


@contextmanager
def start_openai_mesh(tmp: Path, models_dir: Path) -> Iterator[OpenAIMesh]:
    """Start the plan of `llmesh up` in ``tmp`` with keys for admin (ops), alice and
    carol (acme), bob (globex), rita (ratelimited) and dave (initech, the
    Node tests); stop it on exit."""
    collector = Collector()
    otlp = collector.start()
    options = mesh_options(
        tmp,
        models_dir=models_dir,
        default_model=MODEL,
        services=ALL_SERVICES,
        metrics=("openai",),
        args={"inference": ["--max-batch-size", "4"]},
        env={
            "gateway": {
                "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "30",
                "LLMESH_GATEWAY_RATE_LIMIT__BURST_SECONDS": "10",
                "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "1200",
            },
            "inference": PACED_WORKER,
        },
    )
    try:
        with LocalMesh(
            build_plan(options), home=tmp, env=otlp_env(otlp, options.services)
        ) as local:
            local.start()
            mesh = OpenAIMesh(local=local, collector=collector)
            mesh.keys["admin"] = local.create_key(role="admin", tenant="ops")
            # A second admin key for the tests: creating the keys below spends the
            # first one's burst of cheap calls.
            mesh.keys["ops"] = local.create_key(role="admin", tenant="ops")
            mesh.keys.update(create_user_keys(mesh.gateway, mesh.keys["admin"], USERS))
            yield mesh
    finally:
        collector.stop()
