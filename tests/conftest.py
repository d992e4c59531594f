"""Fixtures of the cross-service tests: the gateway e2e mesh, shared by its modules."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # makes the e2etest package importable

from e2etest.gateway_mesh import Mesh, start_gateway_mesh  # noqa: E402


@pytest.fixture(scope="session")
def gateway_mesh(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Mesh]:
    """One gateway mesh for test_e2e_gateway_{auth,chat,outage}.py, started on first use.

    Those modules run in that (name) order; the outage tests, last, kill the registry
    and a worker, so no other module may use this fixture after them.
    """
    with start_gateway_mesh(tmp_path_factory.mktemp("e2e-gateway"), tiny_model_dir) as mesh:
        yield mesh
