"""Ranking metrics of a recall run: hit@1 and recall@5 (plus MRR) per query kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .dataset import KINDS, Dataset, Query


def hit_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """1.0 when any relevant id is among the first ``k`` results, else 0.0."""
    return 1.0 if set(ranked[:k]) & set(relevant) else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """Share of the relevant ids found among the first ``k`` results."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & set(relevant)) / len(set(relevant))


def reciprocal_rank(ranked: Sequence[str], relevant: Sequence[str]) -> float:
    """1 / rank of the first relevant id (0.0 when none is returned)."""
    wanted = set(relevant)
    for rank, memory_id in enumerate(ranked, start=1):
        if memory_id in wanted:
            return 1.0 / rank
    return 0.0


@dataclass(frozen=True, slots=True)
class Scores:
    """Averages over a group of queries."""

    queries: int
    hit_at_1: float
    recall_at_5: float
    mrr: float

    def as_dict(self) -> dict[str, float | int]:
        """Plain numbers for JSON, rounded to 3 decimals."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def score(queries: Sequence[Query], rankings: Mapping[str, Sequence[str]]) -> Scores:
    """Mean hit@1, recall@5 and MRR of ``queries`` given each query id's ranked ids."""
    if not queries:
        return Scores(0, 0.0, 0.0, 0.0)
    n = len(queries)
    return Scores(
        queries=n,
        hit_at_1=sum(hit_at_k(rankings.get(q.id, ()), q.relevant, 1) for q in queries) / n,
        recall_at_5=sum(recall_at_k(rankings.get(q.id, ()), q.relevant, 5) for q in queries) / n,
        mrr=sum(reciprocal_rank(rankings.get(q.id, ()), q.relevant) for q in queries) / n,
    )


def score_by_kind(dataset: Dataset, rankings: Mapping[str, Sequence[str]]) -> dict[str, Scores]:
    """Scores per query kind (``paraphrase``, ``exact``, ``mixed``) and over ``all``."""
    out: dict[str, Scores] = {k: score(dataset.queries_of(k), rankings) for k in KINDS}
    out["all"] = score(dataset.queries, rankings)
    return out
