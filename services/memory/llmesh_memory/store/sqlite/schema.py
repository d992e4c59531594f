"""SQLite schema: connections, migrations (``migrations/NNNN_*.sql``) and the FTS layout."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable
from importlib import resources
from pathlib import Path


def migrations() -> list[tuple[int, str]]:
    """``(version, sql)`` of every migration shipped with the package, in order."""
    folder = resources.files("llmesh_memory.store.sqlite") / "migrations"
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(out)


def connect(path: Path, *, busy_ms: int) -> sqlite3.Connection:
    """A connection in autocommit mode, WAL, ``synchronous=FULL``, foreign keys on."""
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        timeout=busy_ms / 1000,
        check_same_thread=False,
    )
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations not applied yet, each in its own transaction."""
    conn.create_function("llmesh_fts_terms", 2, fts_terms, deterministic=True)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    for version, sql in migrations():
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def namespace_token(namespace: str) -> str:
    """The token prefix that marks a namespace's terms in the FTS index."""
    return "n" + hashlib.sha256(namespace.encode()).hexdigest()[:16]


def fts_terms(namespace: str, terms: str) -> str:
    """Space-joined ``terms`` as indexed: each prefixed with the namespace token, so every
    posting list (and FTS5's BM25 statistics) belongs to one namespace."""
    prefix = namespace_token(namespace) + "_"
    return " ".join(prefix + t for t in terms.split())


def fts_query(namespace: str, terms: Iterable[str]) -> str:
    """An FTS5 query for the namespace's documents matching any of ``terms`` (quoted)."""
    prefix = namespace_token(namespace) + "_"
    return " OR ".join('"' + (prefix + t).replace('"', '""') + '"' for t in terms)
