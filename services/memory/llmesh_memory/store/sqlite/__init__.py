"""SQLite backend of the memory store (the embedded default).

``store`` (threads, connections, transactions), ``schema`` (migrations, FTS layout),
``sessions``, ``memories`` and ``search`` (the SQL of each job).
"""

from .schema import fts_query, fts_terms, namespace_token
from .store import SqliteStore

__all__ = ["SqliteStore", "fts_query", "fts_terms", "namespace_token"]
