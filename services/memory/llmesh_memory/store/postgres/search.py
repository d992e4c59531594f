"""PostgreSQL search: pgvector (HNSW or exact) and tsvector GIN candidates in one statement."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from psycopg import AsyncConnection

from llmesh.kernel.timestamps import stored_expiry

from ...scoring import CorpusStats
from ..base import (
    Candidate,
    MemoryRecord,
    SearchQuery,
    SearchResult,
    Vector,
    keyword_terms,
)
from .sessions import LIVE

MIN_HNSW_SHARE = 0.2
# Keyword matches are ranked in SQL only when the picked terms match at most this many.
KEYWORD_RANK_MAX = 500
# ``ef_search`` is the breadth for a namespace of this many rows; see VectorPlan.hnsw_ef.
EF_REFERENCE_ROWS = 100_000
MAX_EF = 1000  # pgvector's limit


@dataclass(frozen=True, slots=True)
class VectorPlan:
    """How vector candidates are searched: ``ef_search`` and when to search exactly."""

    ef_search: int = 200
    exact_search_max_rows: int = 2_000
    ef_search_min: int = 40

    def hnsw_ef(self, docs: int, table_rows: float, filtered: bool, limit: int = 0) -> int | None:
        """``ef_search`` for an HNSW search of a namespace, or None to search it exactly.

        HNSW filters by namespace *after* the graph search, so it is used only when the
        namespace is large and holds a good share of all rows; ``ef_search`` grows as
        the share shrinks, so enough of the graph's candidates survive the filter.
        The breadth also follows the namespace's size: ``ef_search`` holds at
        ``EF_REFERENCE_ROWS`` and scales with the square root of the size around it
        (at least ``ef_search_min``, and at least ``limit``: HNSW returns no more rows
        than its breadth). Measured here, the breadth a given recall needs grows faster
        than that (between ``rows^0.6`` and ``rows^0.9``), so smaller namespaces keep at
        least the recall of the reference size at a lower cost; namespaces far larger
        than the reference need ``hnsw_ef_search`` raised.
        """
        if filtered or docs <= self.exact_search_max_rows:
            return None
        share = docs / max(table_rows, float(docs))
        if share < MIN_HNSW_SHARE:
            return None
        sized = max(self.ef_search_min, self.ef_search * math.sqrt(docs / EF_REFERENCE_ROWS))
        return min(MAX_EF, max(limit, round(sized / share)))


def tsquery(namespace: str, terms: Sequence[str]) -> str:
    """A tsquery: the namespace's lexeme AND any of ``terms`` (each quoted literally)."""
    any_term = " | ".join("'" + t.replace("\\", "\\\\").replace("'", "''") + "'" for t in terms)
    marker = "ns:" + hashlib.md5(namespace.encode(), usedforsecurity=False).hexdigest()
    return f"'{marker}' & ({any_term})"


async def search(
    conn: AsyncConnection[Any],
    namespace: str,
    query: SearchQuery,
    *,
    now: float,
    plan: VectorPlan,
    vector: Awaitable[Vector | None] | None = None,
) -> SearchResult:
    """Vector and keyword candidates (their union, exact cosine for each) and term stats.

    With ``vector``, the query vector is still being computed (``query.vector`` is
    ignored): the term statistics and keyword candidates are read first, on this
    transaction, and the vector search runs once ``vector`` gives it.
    """
    params: dict[str, Any] = {
        "ns": namespace,
        "now": now,
        "n": query.limit,
        "filter": json.dumps(dict(query.metadata_filter)),
    }
    filt = " AND metadata @> %(filter)s::jsonb" if query.metadata_filter else ""
    stats, table_rows = await corpus_stats(conn, namespace, query.terms)
    settings = ["SET LOCAL enable_seqscan = off"]  # GIN / HNSW, never a full scan
    ef: int | None = None
    if (vector is not None or query.vector is not None) and stats.docs:
        ef = plan.hnsw_ef(stats.docs, table_rows, bool(query.metadata_filter), query.limit)
        if ef is not None:
            settings.append(f"SET LOCAL hnsw.ef_search = {ef}")
    picking = keyword_terms(query, stats, with_vector=True if vector is not None else None)
    keyword = _keyword_part(namespace, picking, stats, filt, params)
    if vector is not None:
        # Overlap: settings and keyword candidates now, while the vector is computed.
        await conn.execute("; ".join(settings))
        settings = []
        ids = await _keyword_ids(conn, keyword, params)
        query = replace(query, vector=await vector)
        if query.vector is None and (repick := keyword_terms(query, stats)) != picking:
            # Keyword-only after all: it picks more terms.
            ids = await _keyword_ids(
                conn, _keyword_part(namespace, repick, stats, filt, params), params
            )
        params["kw"] = ids
        keyword = "(SELECT unnest(%(kw)s::text[]))" if ids else ""
    params["q"] = query.vector
    parts: list[str] = []
    if query.vector is not None and stats.docs:
        if ef is None:  # small namespace (or filtered): exact, over its rows only
            parts.append(
                "(WITH c AS MATERIALIZED (SELECT id, embedding <=> %(q)s AS d "
                "FROM memories WHERE namespace = %(ns)s AND embedding IS NOT NULL AND "
                + LIVE
                + filt
                + ") SELECT id FROM c ORDER BY d LIMIT %(n)s)"
            )
        else:
            parts.append(
                "(SELECT id FROM memories WHERE namespace = %(ns)s AND "
                + LIVE
                + " ORDER BY embedding <=> %(q)s LIMIT %(n)s)"
            )
    if keyword:
        parts.append(keyword)
    candidates: list[Candidate] = []
    if parts:
        if settings:
            await conn.execute("; ".join(settings))
        # One statement: the candidate lists, then their rows with exact cosine.
        cur = await conn.execute(
            "SELECT id, text, metadata, created_at, expires_at, embedding IS NOT NULL, "
            "terms, CASE WHEN embedding IS NULL OR %(q)s::vector IS NULL THEN NULL "
            "ELSE 1 - (embedding <=> %(q)s) END FROM memories "
            "WHERE namespace = %(ns)s AND id IN (" + " UNION ".join(parts) + ")",
            params,
        )
        for row in await cur.fetchall():
            record = MemoryRecord(
                id=row[0],
                text=row[1],
                metadata=row[2],
                created_at=row[3],
                expires_at=stored_expiry(row[4], what=f"memory {row[0]}"),
                embedded=bool(row[5]),
            )
            semantic = None if row[7] is None else float(row[7])
            candidates.append(Candidate(record, semantic, row[6]))
    return SearchResult(candidates, stats)


def _keyword_part(
    namespace: str, picking: Sequence[str], stats: CorpusStats, filt: str, params: dict[str, Any]
) -> str:
    """The keyword candidates' subquery (sets ``params["tsq"]``); empty when none picked."""
    if not picking:
        return ""
    params["tsq"] = tsquery(namespace, picking)
    # Ranking every match costs a heap read each; when the picked terms match
    # many memories (only one common term picked), any of them will do: all
    # candidates are scored with BM25 afterwards anyway.
    matched = sum(stats.df[t] for t in picking)
    order = " ORDER BY ts_rank(tsv, %(tsq)s::tsquery) DESC" if matched <= KEYWORD_RANK_MAX else ""
    # The namespace is matched through its lexeme (one GIN lookup); the outer
    # query checks the namespace column as well.
    return (
        "(SELECT id FROM memories WHERE tsv @@ %(tsq)s::tsquery AND "
        + LIVE
        + filt
        + order
        + " LIMIT %(n)s)"
    )


async def _keyword_ids(
    conn: AsyncConnection[Any], keyword: str, params: dict[str, Any]
) -> list[str]:
    """Ids the keyword subquery finds (none for an empty one)."""
    if not keyword:
        return []
    cur = await conn.execute(keyword, params)
    return [row[0] for row in await cur.fetchall()]


async def corpus_stats(
    conn: AsyncConnection[Any], namespace: str, terms: Sequence[str]
) -> tuple[CorpusStats, float]:
    """The namespace's term statistics and the table's estimated row count."""
    cur = await conn.execute(
        "SELECT (SELECT docs FROM namespace_stats WHERE namespace = %(ns)s), "
        "(SELECT total_terms FROM namespace_stats WHERE namespace = %(ns)s), "
        "(SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = 'memories'::regclass), "
        "(SELECT array_agg(term ORDER BY term) FROM term_stats "
        " WHERE namespace = %(ns)s AND term = ANY(%(terms)s)), "
        "(SELECT array_agg(df ORDER BY term) FROM term_stats "
        " WHERE namespace = %(ns)s AND term = ANY(%(terms)s))",
        {"ns": namespace, "terms": list(terms)},
    )
    row = await cur.fetchone()
    assert row is not None
    docs, total, rows, names, counts = row
    df = {str(t): int(c) for t, c in zip(names or (), counts or (), strict=True)}
    stats = CorpusStats(docs=int(docs or 0), total_terms=int(total or 0), df=df)
    return stats, float(rows or 0)
