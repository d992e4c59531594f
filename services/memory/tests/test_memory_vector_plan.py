"""PostgreSQL's HNSW: the breadth per namespace (size, share of the table, limit, exact
search) and the graph's build parameters."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from llmesh_memory.store.postgres import PostgresStore
from llmesh_memory.store.postgres.search import VectorPlan


def test_the_reference_size_gets_ef_search() -> None:
    assert VectorPlan(ef_search=200).hnsw_ef(100_000, 100_000, False) == 200


@pytest.mark.parametrize(
    ("docs", "expected"),
    [(10_000, 63), (40_000, 126), (400_000, 400), (1_000_000, 632), (5_000_000, 1000)],
)
def test_breadth_follows_the_square_root_of_the_size(docs: int, expected: int) -> None:
    assert VectorPlan(ef_search=200).hnsw_ef(docs, docs, False) == expected


def test_breadth_has_a_floor_and_covers_the_limit() -> None:
    plan = VectorPlan(ef_search=100, ef_search_min=40, exact_search_max_rows=1000)
    assert plan.hnsw_ef(2_000, 2_000, False) == 40
    assert plan.hnsw_ef(2_000, 2_000, False, limit=80) == 80


def test_a_namespace_sharing_the_table_searches_wider() -> None:
    plan = VectorPlan(ef_search=200)
    assert plan.hnsw_ef(100_000, 400_000, False) == 800  # a quarter of the rows


def test_small_filtered_or_minor_namespaces_are_searched_exactly() -> None:
    plan = VectorPlan(ef_search=200, exact_search_max_rows=2_000)
    assert plan.hnsw_ef(2_000, 2_000, False) is None  # small
    assert plan.hnsw_ef(100_000, 100_000, True) is None  # metadata filter
    assert plan.hnsw_ef(10_000, 100_000, False) is None  # under 20% of the table


async def test_the_hnsw_graph_is_built_with_ef_construction_200(
    postgres_dsn_factory: Callable[[], str],
) -> None:
    dsn = postgres_dsn_factory()
    store = PostgresStore(dsn)
    await store.start()
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                "SELECT reloptions FROM pg_class WHERE relname = 'memories_embedding'"
            )
            row = await cur.fetchone()
    finally:
        await store.close()
    assert row is not None
    assert sorted(row[0]) == ["ef_construction=200", "m=16"]
