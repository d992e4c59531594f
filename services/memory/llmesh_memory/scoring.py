"""Keyword relevance (BM25, normalised without inflating weak matches) and score fusion.

Keyword scores are BM25 divided by the score an average-length document containing
every query term once would get (the sum of the query terms' IDF). That is an
absolute scale, the share of the query's IDF-weighted content a memory matches: a hit
on one common word of a long query stays small, instead of being stretched to 1.0 as
min-max normalisation over the result list would do, while a hit on a rare exact token
(an error code, a host name) scores high.

Fusion counts keyword evidence only where it discriminates: the weighted hybrid adds
``keyword_weight * max(0, keyword - KEYWORD_FLOOR) / (1 - KEYWORD_FLOOR)``, so a match
covering less than ``KEYWORD_FLOOR`` of the query's IDF-weighted terms (one ordinary
word shared with a wrong memory) adds nothing and cannot overturn the semantic order,
while a match on the query's rare terms or identifiers still decides between near twins.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

K1 = 1.2
B = 0.75
RRF_K = 60
# In RRF, keyword matches weaker than this do not get a keyword rank at all (a rank
# carries no strength, so a one-common-word match would otherwise count as much as
# an exact identifier match).
RRF_MIN_KEYWORD = 0.45
DEFAULT_SEMANTIC_WEIGHT = 0.6
DEFAULT_KEYWORD_WEIGHT = 0.4
# In the weighted hybrid, the share of the query's IDF-weighted content a keyword match
# must cover before it counts at all (above it, it counts linearly up to 1).
KEYWORD_FLOOR = 0.3
# Identifiers (tokens with a digit, or joined by - . : / @ _) are precise evidence.
CODE_WEIGHT = 2.0
# Share of an unseen query term's IDF that still counts in the normaliser.
UNSEEN_WEIGHT = 0.5
_CODE = re.compile(r"\d|\w[-.:/@_]\w")


def is_code(term: str) -> bool:
    """Whether a term looks like an identifier (``e4417``, ``db-replica-07``, ``3.14.2``)."""
    return _CODE.search(term) is not None


class Fusion(Enum):
    """How semantic and keyword relevance combine (mirrors ``llmesh.v1.FusionMode``)."""

    WEIGHTED = "weighted"
    RRF = "rrf"
    SEMANTIC = "semantic"
    KEYWORD = "keyword"


@dataclass(frozen=True, slots=True)
class CorpusStats:
    """Term statistics of one namespace: documents, total terms, document frequencies."""

    docs: int
    total_terms: int
    df: Mapping[str, int]

    @property
    def avgdl(self) -> float:
        return self.total_terms / self.docs if self.docs else 1.0

    def idf(self, term: str) -> float:
        """BM25 IDF (the non-negative Lucene form)."""
        n = self.df.get(term, 0)
        return math.log(1.0 + (self.docs - n + 0.5) / (n + 0.5))


def keyword_score(query: Sequence[str], doc_terms: Sequence[str], stats: CorpusStats) -> float:
    """Normalised BM25 of one document in [0, 1]; 0 when no query term occurs."""
    if not query or not doc_terms:
        return 0.0
    counts = Counter(doc_terms)
    length_norm = K1 * (1 - B + B * len(doc_terms) / stats.avgdl)
    raw = 0.0
    ideal = 0.0
    for term in query:
        idf = stats.idf(term) * (CODE_WEIGHT if is_code(term) else 1.0)
        ideal += idf if stats.df.get(term, 0) else idf * UNSEEN_WEIGHT
        tf = counts.get(term, 0)
        if tf:
            raw += idf * tf * (K1 + 1) / (tf + length_norm)
    if raw <= 0 or ideal <= 0:
        return 0.0
    return float(min(1.0, raw / ideal))


def discriminative(keyword: float) -> float:
    """The part of a keyword score the weighted hybrid counts: 0 up to ``KEYWORD_FLOOR``,
    then linear up to 1 (a full match)."""
    return max(0.0, keyword - KEYWORD_FLOOR) / (1.0 - KEYWORD_FLOOR)


@dataclass(frozen=True, slots=True)
class Scored:
    """One candidate's component scores (semantic None when not computed)."""

    key: str
    semantic: float | None
    keyword: float


@dataclass(frozen=True, slots=True)
class Fused:
    """A candidate's final score with both components."""

    key: str
    score: float
    semantic: float
    keyword: float


def _ranks(values: Mapping[str, float]) -> dict[str, int]:
    ordered = sorted((k for k, v in values.items() if v > 0), key=lambda k: -values[k])
    return {k: i + 1 for i, k in enumerate(ordered)}


def fuse(
    candidates: Sequence[Scored],
    *,
    mode: Fusion,
    semantic_weight: float = DEFAULT_SEMANTIC_WEIGHT,
    keyword_weight: float = DEFAULT_KEYWORD_WEIGHT,
) -> list[Fused]:
    """Combined scores, best first (ties broken by key for a stable order).

    Without semantic scores (degraded) every mode but SEMANTIC ranks by keyword.
    """
    semantic_known = any(c.semantic is not None for c in candidates)
    if not semantic_known and mode is not Fusion.SEMANTIC:
        mode = Fusion.KEYWORD
    out: list[Fused] = []
    if mode is Fusion.RRF:
        sem_ranks = _ranks(
            {c.key: max(c.semantic or 0.0, 1e-9) for c in candidates if c.semantic is not None}
        )
        kw_ranks = _ranks({c.key: c.keyword for c in candidates if c.keyword >= RRF_MIN_KEYWORD})
        for c in candidates:
            score = 0.0
            if c.key in sem_ranks:
                score += 1.0 / (RRF_K + sem_ranks[c.key])
            if c.key in kw_ranks:
                score += 1.0 / (RRF_K + kw_ranks[c.key])
            out.append(Fused(c.key, score, c.semantic or 0.0, c.keyword))
    else:
        for c in candidates:
            semantic = c.semantic or 0.0
            if mode is Fusion.SEMANTIC:
                score = semantic
            elif mode is Fusion.KEYWORD:
                score = c.keyword
            else:
                score = semantic_weight * max(semantic, 0.0) + keyword_weight * discriminative(
                    c.keyword
                )
            out.append(Fused(c.key, score, semantic, c.keyword))
    if mode is Fusion.KEYWORD:
        out = [f for f in out if f.keyword > 0]
    out.sort(key=lambda f: (-f.score, f.key))
    return out
