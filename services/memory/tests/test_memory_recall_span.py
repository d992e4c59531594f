"""The recall's store span carries its candidate count (it was set after the span had
ended: lost, and one "Setting attribute on ended span" warning per Recall, 1,500 a
minute under bench/load.py)."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmesh.kernel.telemetry import setup_telemetry
from llmesh_memory.embedder import NoEmbedder
from llmesh_memory.engine import MemoryEngine, RecallParams
from llmesh_memory.scoring import Fusion
from llmesh_memory.store.sqlite import SqliteStore


async def test_store_search_span_counts_the_candidates(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    setup_telemetry("memory-test", span_exporter=exporter)
    store = SqliteStore(tmp_path / "memory.db")
    await store.start()
    try:
        engine = MemoryEngine(store, NoEmbedder())
        for text in ("the staging cluster is in Frankfurt", "backups are kept for thirty days"):
            await engine.remember("ns-span", text)
        for mode in (Fusion.WEIGHTED, Fusion.KEYWORD):
            exporter.clear()
            await engine.recall("ns-span", RecallParams(query="staging cluster", mode=mode))
            spans = [s for s in exporter.get_finished_spans() if s.name == "memory.store.search"]
            assert len(spans) == 1, mode
            assert (spans[0].attributes or {}).get("memory.candidates") == 1, mode
    finally:
        await store.close()
