"""The security suite's mesh: the gateway e2e mesh (``e2etest.gateway_mesh``: every service
its own process, spans exported over OTLP to a collector here) started once for this
package, with /metrics on every service and rate limits high enough that the suite's
own calls are never throttled (the starvation test relies on the per-principal stream
limit, not on rates)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2etest.gateway_mesh import Mesh, start_gateway_mesh

ALL_CHILDREN = ("registry", "memory", "inference", "inference-1", "gateway")
GATEWAY_ENV = {
    "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "100000",
    "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "100000",
    "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "100000000",
}


@pytest.fixture(scope="package")
def security_mesh(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Mesh]:
    with start_gateway_mesh(
        tmp_path_factory.mktemp("security-mesh"),
        tiny_model_dir,
        metrics=ALL_CHILDREN,
        gateway_env=GATEWAY_ENV,
    ) as mesh:
        yield mesh
