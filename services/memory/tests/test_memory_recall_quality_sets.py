"""Retrieval quality on every labelled set, the held-out one first, through the real engine.

For each set in ``bench/recall_eval/`` (``heldout`` was never used to tune the ranking)
every memory is stored and every query ranked through :class:`MemoryEngine` over a
SQLite store -- the production path: store candidates, keyword scoring, fusion -- in
all four modes. The default hybrid must be at least as good as semantic-only and as
keyword-only on every kind of query (hit@1 and recall@5) and better than both overall
(hit@1). The vectors are the real all-MiniLM-L6-v2's, committed with checksums
(``bench/recall_eval/vectors/``; regenerate with ``python -m bench.recall_eval.vectors``);
one test embeds a sample with the real model and compares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bench.bench_recall_quality import hybrid_checks, summarize
from bench.recall_eval.vectors import dataset_of, load_vectors, texts_of
from llmesh_memory.embedder import EmbedderUnavailable, GrpcEmbedder
from llmesh_memory.engine import MemoryEngine, RecallParams
from llmesh_memory.scoring import Fusion
from llmesh_memory.store.sqlite import SqliteStore

MODES = {
    "semantic": Fusion.SEMANTIC,
    "keyword": Fusion.KEYWORD,
    "weighted": Fusion.WEIGHTED,
    "rrf": Fusion.RRF,
}


class CommittedEmbedder:
    """The :class:`~llmesh_memory.embedder.Embedder` protocol over committed vectors."""

    def __init__(self, vectors: Mapping[str, npt.NDArray[np.float32]]) -> None:
        self._vectors = vectors

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        missing = [t for t in texts if t not in self._vectors]
        if missing:
            raise EmbedderUnavailable(f"no committed vector for {missing[0]!r}")
        return np.stack([self._vectors[t] for t in texts])

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("name", ["heldout", "tuning", "dataset"])
async def test_default_hybrid_never_loses_to_either_half(tmp_path: Path, name: str) -> None:
    dataset = dataset_of(name)
    store = SqliteStore(tmp_path / "quality.db")
    await store.start()
    engine = MemoryEngine(store, CommittedEmbedder(load_vectors(name)))
    try:
        ids: dict[str, str] = {}
        for ns in dataset.namespaces:
            for memory in ns.memories:
                stored = await engine.remember(ns.name, memory.text)
                assert stored.embedded and not stored.duplicate
                ids[stored.id] = memory.id
        rankings: dict[str, dict[str, list[str]]] = {}
        for mode, fusion in MODES.items():
            rankings[mode] = {}
            for q in dataset.queries:
                outcome = await engine.recall(
                    q.namespace, RecallParams(query=q.text, k=10, mode=fusion)
                )
                assert not outcome.degraded
                rankings[mode][q.id] = [ids[h.memory.id] for h in outcome.hits]
    finally:
        await store.close()
    scores = summarize(dataset, rankings)
    report = {
        mode: {kind: (s.hit_at_1, s.recall_at_5) for kind, s in by_kind.items()}
        for mode, by_kind in scores.items()
    }
    checks = hybrid_checks(scores)
    assert checks and all(checks.values()), (name, checks, report)
    # A fusion that ignored keyword evidence would only tie semantic-only on exact queries.
    if scores["semantic"]["exact"].hit_at_1 < 1.0:
        assert scores["weighted"]["exact"].hit_at_1 > scores["semantic"]["exact"].hit_at_1, report


async def test_committed_vectors_are_the_real_models(minilm_target: str) -> None:
    vectors = load_vectors("heldout")
    texts = texts_of(dataset_of("heldout"))
    sample = texts[:: max(1, len(texts) // 6)][:6]
    embedder = GrpcEmbedder(minilm_target, timeout_s=120)
    try:
        fresh = await embedder.embed(sample)
    finally:
        await embedder.close()
    for text, vector in zip(sample, fresh, strict=True):
        assert float(vector @ vectors[text]) > 0.999, text
