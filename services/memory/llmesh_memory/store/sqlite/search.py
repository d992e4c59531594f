"""SQLite search: vector candidates from an in-memory index, keyword candidates from FTS5.

Runs in one read snapshot on a reader thread; the keyword part runs first, so it can
overlap the computation of the query vector (``vector``). The namespace's vector index is built
from the table on first use (``built`` receives it) and kept by the store.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

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
from ..vectors import VectorIndex, top_k
from .schema import fts_query

_LIVE = "(m.expires_at IS NULL OR m.expires_at > ?)"


def search(
    conn: sqlite3.Connection,
    namespace: str,
    *,
    query: SearchQuery,
    now: float,
    snapshot: tuple[Any, Vector] | None,
    built: list[VectorIndex],
    vector: Callable[[], Vector | None] | None = None,
) -> SearchResult:
    """Vector and keyword candidates in one read transaction.

    With ``vector``, the query vector is still being computed: the keyword candidates
    are found first, then ``vector()`` (which may block) gives it (``query.vector`` is
    ignored).
    """
    conn.execute("BEGIN")
    try:
        return _search(
            conn, namespace, query=query, now=now, snapshot=snapshot, built=built, vector=vector
        )
    finally:
        conn.rollback()


def _search(
    conn: sqlite3.Connection,
    namespace: str,
    *,
    query: SearchQuery,
    now: float,
    snapshot: tuple[Any, Vector] | None,
    built: list[VectorIndex],
    vector: Callable[[], Vector | None] | None,
) -> SearchResult:
    stats = corpus_stats(conn, namespace, query.terms)
    filter_sql, filter_params = metadata_filter_sql(query.metadata_filter)
    # Keyword candidates first: they need no vector, so they are found while it is computed.
    keywords = functools.partial(
        _keyword_rowids,
        conn,
        namespace,
        query=query,
        now=now,
        filter_sql=filter_sql,
        filter_params=filter_params,
    )
    picking = keyword_terms(query, stats, with_vector=True if vector else None)
    keyword = keywords(picking)
    if vector is not None:
        query = replace(query, vector=vector())
        if query.vector is None and (repick := keyword_terms(query, stats)) != picking:
            # Keyword-only after all: it picks more terms.
            keyword = keywords(repick)
    wanted: dict[int, float | None] = {}  # rowid -> cosine when already known
    if query.vector is not None and stats.docs:
        if snapshot is None:
            index = _build_index(conn, namespace, len(query.vector))
            built.append(index)
            snapshot = index.snapshot()
        rowids, matrix = snapshot
        if query.metadata_filter:
            allowed = np.array(
                [
                    r[0]
                    for r in conn.execute(
                        f"SELECT m.rowid FROM memories m WHERE m.namespace = ? AND {_LIVE} "
                        f"{filter_sql}",
                        (namespace, now, *filter_params),
                    )
                ],
                np.int64,
            )
            mask = np.isin(rowids, allowed)
            rowids, matrix = rowids[mask], matrix[mask]
        for rowid, similarity in top_k(rowids, matrix, query.vector, query.limit):
            wanted[rowid] = similarity
    for rowid in keyword:
        wanted.setdefault(rowid, None)
    candidates = _candidates(
        conn,
        namespace,
        wanted,
        query=query,
        now=now,
        filter_sql=filter_sql,
        filter_params=filter_params,
    )
    return SearchResult(candidates, stats)


def _keyword_rowids(
    conn: sqlite3.Connection,
    namespace: str,
    picking: Sequence[str],
    *,
    query: SearchQuery,
    now: float,
    filter_sql: str,
    filter_params: list[Any],
) -> list[int]:
    """Rowids of the best FTS matches of ``picking`` (none when nothing is picked)."""
    if not picking:
        return []
    if not query.metadata_filter:
        # FTS5 ranks inside its own index (fast); expiry is checked on the fetch below.
        return [
            rowid
            for (rowid,) in conn.execute(
                "SELECT rowid FROM memory_fts WHERE memory_fts MATCH ? ORDER BY rank LIMIT ?",
                (fts_query(namespace, picking), query.limit),
            )
        ]
    return [
        rowid
        for (rowid,) in conn.execute(
            "SELECT m.rowid FROM memory_fts f JOIN memories m ON m.rowid = f.rowid "
            f"WHERE memory_fts MATCH ? AND +m.namespace = ? AND {_LIVE} {filter_sql} "
            "ORDER BY f.rank LIMIT ?",
            (fts_query(namespace, picking), namespace, now, *filter_params, query.limit),
        )
    ]


def _build_index(conn: sqlite3.Connection, namespace: str, dim: int) -> VectorIndex:
    rows = conn.execute(
        "SELECT rowid, vector FROM memories WHERE namespace = ? "
        "AND vector IS NOT NULL ORDER BY rowid",
        (namespace,),
    ).fetchall()
    good = [(r[0], r[1]) for r in rows if len(r[1]) == dim * 4]
    rowids = np.fromiter((r[0] for r in good), np.int64, len(good))
    matrix = np.frombuffer(b"".join(r[1] for r in good), np.float32).reshape(-1, dim)
    return VectorIndex.from_arrays(rowids, matrix)


def _candidates(
    conn: sqlite3.Connection,
    namespace: str,
    wanted: dict[int, float | None],
    *,
    query: SearchQuery,
    now: float,
    filter_sql: str,
    filter_params: list[Any],
) -> list[Candidate]:
    candidates: list[Candidate] = []
    if not wanted:
        return candidates
    marks = ",".join("?" * len(wanted))
    # Vectors are read only for candidates whose cosine is not known yet.
    rows = conn.execute(
        "SELECT m.rowid, m.id, m.text, m.metadata, m.created_at, m.expires_at, "
        "m.vector IS NOT NULL, m.terms FROM memories m "
        # "+m.namespace": look rows up by rowid, never scan the namespace index.
        f"WHERE m.rowid IN ({marks}) AND +m.namespace = ? AND {_LIVE} {filter_sql}",
        (*wanted, namespace, now, *filter_params),
    ).fetchall()
    unknown = [r[0] for r in rows if r[6] and wanted[r[0]] is None]
    if unknown and query.vector is not None:
        for rowid, blob in conn.execute(
            f"SELECT rowid, vector FROM memories WHERE rowid IN ({','.join('?' * len(unknown))})",
            unknown,
        ):
            vector = np.frombuffer(blob, np.float32)
            if vector.shape == query.vector.shape:
                wanted[rowid] = float(vector @ query.vector)
    for row in rows:
        record = MemoryRecord(
            id=row[1],
            text=row[2],
            metadata=json.loads(row[3]),
            created_at=row[4],
            expires_at=stored_expiry(row[5], what=f"memory {row[1]}"),
            embedded=bool(row[6]),
        )
        semantic = wanted[row[0]] if query.vector is not None else None
        candidates.append(Candidate(record, semantic, row[7].split()))
    return candidates


def corpus_stats(conn: sqlite3.Connection, namespace: str, terms: Sequence[str]) -> CorpusStats:
    """The namespace's document count, term total and the document frequency of ``terms``."""
    row = conn.execute(
        "SELECT docs, total_terms FROM namespace_stats WHERE namespace = ?", (namespace,)
    ).fetchone()
    docs, total = (0, 0) if row is None else (row[0], row[1])
    df: dict[str, int] = {}
    if terms:
        marks = ",".join("?" * len(terms))
        df = dict(
            conn.execute(
                f"SELECT term, df FROM term_stats WHERE namespace = ? AND term IN ({marks})",
                (namespace, *terms),
            ).fetchall()
        )
    return CorpusStats(docs=docs, total_terms=total, df=df)


def metadata_filter_sql(metadata_filter: Mapping[str, str]) -> tuple[str, list[Any]]:
    """SQL (``AND ...`` on alias ``m``) and parameters matching every metadata pair."""
    sql = ""
    params: list[Any] = []
    for key, value in sorted(metadata_filter.items()):
        sql += " AND EXISTS (SELECT 1 FROM json_each(m.metadata) j WHERE j.key = ? AND j.value = ?)"
        params += [key, value]
    return sql, params
