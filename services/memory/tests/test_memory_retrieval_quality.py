"""Retrieval quality on the labelled set in ``bench/recall_eval/``, real MiniLM embeddings.

The default hybrid (weighted 0.6/0.4) must be at least as good as the better of its
two halves on every query kind, and better than both overall. Memories and queries
are embedded by a real MiniLM worker through ``InferenceService.Embed`` (one batched
call warms the service's query-vector cache; every search then runs the production
path: engine, store, keyword scoring, fusion).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from llmesh_memory.embedder import GrpcEmbedder
from llmesh_memory.engine import MemoryEngine, RecallParams
from llmesh_memory.scoring import Fusion
from llmesh_memory.store.sqlite import SqliteStore

DATASET = Path(__file__).resolve().parents[3] / "bench" / "recall_eval" / "dataset.json"
KINDS = ("paraphrase", "exact", "mixed")


def _score(
    queries: Sequence[dict[str, Any]], rankings: dict[str, list[str]]
) -> dict[str, tuple[float, float]]:
    """(hit@1, recall@5) per kind and over ``all``."""
    out: dict[str, tuple[float, float]] = {}
    for kind in (*KINDS, "all"):
        group = [q for q in queries if kind in ("all", q["kind"])]
        hit1 = sum(bool(set(rankings[q["id"]][:1]) & set(q["relevant"])) for q in group)
        rec5 = sum(
            len(set(rankings[q["id"]][:5]) & set(q["relevant"])) / len(q["relevant"]) for q in group
        )
        out[kind] = (hit1 / len(group), rec5 / len(group))
    return out


@pytest.mark.skipif(not DATASET.exists(), reason="bench/recall_eval/dataset.json is missing")
async def test_default_hybrid_beats_each_half(tmp_path: Path, minilm_target: str) -> None:
    data = json.loads(DATASET.read_text(encoding="utf-8"))
    embedder = GrpcEmbedder(minilm_target, timeout_s=120, cache_size=4096)
    store = SqliteStore(tmp_path / "eval.db")
    await store.start()
    engine = MemoryEngine(store, embedder)
    try:
        texts = [m["text"] for ns in data["namespaces"] for m in ns["memories"]]
        texts += [q["text"] for q in data["queries"]]
        await embedder.embed(texts)  # batched; every later embed is a cache hit
        ids: dict[str, str] = {}
        for ns in data["namespaces"]:
            for m in ns["memories"]:
                stored = await engine.remember(ns["name"], m["text"])
                assert stored.embedded
                ids[stored.id] = m["id"]
        results: dict[Fusion, dict[str, tuple[float, float]]] = {}
        for mode in (Fusion.WEIGHTED, Fusion.SEMANTIC, Fusion.KEYWORD, Fusion.RRF):
            rankings = {}
            for q in data["queries"]:
                outcome = await engine.recall(
                    q["namespace"], RecallParams(query=q["text"], k=10, mode=mode)
                )
                assert not outcome.degraded
                rankings[q["id"]] = [ids[h.memory.id] for h in outcome.hits]
            results[mode] = _score(data["queries"], rankings)
    finally:
        await embedder.close()
        await store.close()
    report = {m.value: r for m, r in results.items()}
    hybrid, semantic, keyword = (
        results[m] for m in (Fusion.WEIGHTED, Fusion.SEMANTIC, Fusion.KEYWORD)
    )
    for kind in KINDS:
        for metric in (0, 1):
            best_half = max(semantic[kind][metric], keyword[kind][metric])
            assert hybrid[kind][metric] >= best_half, (kind, metric, report)
    assert hybrid["all"][0] > max(semantic["all"][0], keyword["all"][0]), report
    assert hybrid["all"][1] >= max(semantic["all"][1], keyword["all"][1]), report
