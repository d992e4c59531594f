"""PostgreSQL backend of the memory store (production).

``store`` (pool, transactions, error mapping), ``schema`` (migrations, the pgvector
dumper), ``sessions``, ``memories`` and ``search`` (the SQL of each job).
"""

from .schema import VectorDumper
from .search import tsquery
from .store import PostgresStore

__all__ = ["PostgresStore", "VectorDumper", "tsquery"]
