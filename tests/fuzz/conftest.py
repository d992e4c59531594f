"""Fixtures of the fuzz suite: one mesh (``fuzz.harness``) in a background thread for the
property tests, and the hypothesis profiles.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default, in ``make test``) draws few examples
per RPC, derandomized, so a run is bounded and reproducible; ``fuzz`` (``make fuzz``)
draws many, from a random seed that hypothesis prints with any failure.
``LLMESH_FUZZ_EXAMPLES`` overrides either profile's examples per RPC.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from fuzz.harness import BackgroundMesh, Mesh

_QUIET = list(HealthCheck)  # slow calls, big examples and a shared mesh are the point here
settings.register_profile(
    "ci",
    max_examples=16,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=_QUIET,
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=300,
    derandomize=False,
    deadline=None,
    database=None,
    suppress_health_check=_QUIET,
    print_blob=True,
)


def fuzz_settings() -> settings:
    """The profile this run asked for (``ci`` by default)."""
    profile = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
    examples = os.environ.get("LLMESH_FUZZ_EXAMPLES")
    if examples:
        return settings(profile, max_examples=int(examples))
    return profile


@pytest.fixture(scope="module")
def fuzz_mesh(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Mesh]:
    """Every service in this process, served from a thread (sync clients call it)."""
    with BackgroundMesh(tmp_path_factory.mktemp("fuzz-mesh"), tiny_model_dir) as running:
        yield running
