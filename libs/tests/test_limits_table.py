"""docs/api.md's field-limits table is the one generated from the protos."""

from __future__ import annotations

from llmesh.tools.limits_table import DOC, render, rows


def test_api_doc_has_the_current_limits_table() -> None:
    doc = DOC.read_text()
    assert render(doc) == doc, "run python -m llmesh.tools.limits_table"


def test_table_lists_the_limits_that_were_findings() -> None:
    from llmesh.v1 import common_pb2, gateway_pb2, memory_pb2

    found = {
        (m, f): r
        for m, f, r in rows([gateway_pb2.DESCRIPTOR, common_pb2.DESCRIPTOR, memory_pb2.DESCRIPTOR])
    }
    assert found[("CreateApiKeyRequest", "ttl")] == "0s..315576000s"
    assert found[("MemoryDraft", "ttl")] == "0s..315576000s"
    assert found[("ForgetRequest", "ids")].startswith("at most 1000 items")
    assert "no NUL" in found[("MemoryDraft", "text")]
    assert found[("GenerationInput", "content")] == "exactly one of prompt \\| messages"


def test_a_shared_message_is_named_where_a_request_uses_it() -> None:
    """The limits of a shared message stand once; each request field points to them."""
    from llmesh.v1 import common_pb2, gateway_pb2, memory_pb2

    found = {
        (m, f): r
        for m, f, r in rows([gateway_pb2.DESCRIPTOR, common_pb2.DESCRIPTOR, memory_pb2.DESCRIPTOR])
    }
    assert found[("RememberRequest", "memory")] == "required; the rules of `MemoryDraft`"
    assert found[("MemoryServiceRememberRequest", "memory")] == (
        "required; the rules of `MemoryDraft`"
    )
    assert found[("ForgetRequest", "metadata_filter")] == "the rules of `Metadata`"
    assert found[("Metadata", "entries")].startswith("at most 32 pairs")
    assert ("Memory", "metadata") not in found  # an output: no limits to show
