"""PostgreSQL schema: migrations (``migrations/NNNN_*.sql``, applied under an advisory
lock so several replicas may start at once) and the pgvector binary dumper."""

from __future__ import annotations

import struct
from importlib import resources
from typing import Any

import numpy as np
from psycopg import AsyncConnection
from psycopg.adapt import Dumper
from psycopg.pq import Format

MIGRATION_LOCK = 0x6C6C6D657368  # "llmesh"


class VectorDumper(Dumper):
    """NumPy float vectors in pgvector's binary format (dim, unused, big-endian float4s)."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        values = np.asarray(obj, dtype=">f4").ravel()
        return struct.pack(">HH", values.shape[0], 0) + values.tobytes()


def migrations() -> list[tuple[int, str]]:
    """``(version, sql)`` of every migration shipped with the package, in order."""
    folder = resources.files("llmesh_memory.store.postgres") / "migrations"
    out = [
        (int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(out)


async def migrate(conn: AsyncConnection[Any]) -> None:
    """Apply the migrations not applied yet, inside the caller's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    cur = await conn.execute("SELECT version FROM schema_migrations")
    done = {row[0] for row in await cur.fetchall()}
    for version, sql in migrations():
        if version not in done:
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
