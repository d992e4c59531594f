"""Open the gateway's key/audit store named by a URL.

Kept apart from :mod:`llmesh_gateway.store` (the interface and records, which the
backends import) so that no backend and the interface import each other.
"""

from __future__ import annotations

from llmesh_gateway.store import GatewayStore


async def open_store(url: str) -> GatewayStore:
    """Open the store named by ``url``: ``sqlite:///path`` or ``postgresql://...``."""
    if url.startswith("sqlite:///") or url == "sqlite://:memory:":
        from llmesh_gateway.store_sqlite import SqliteStore

        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ":memory:"
        return await SqliteStore.open(path)
    if url.startswith(("postgresql://", "postgres://")):
        from llmesh_gateway.store_postgres import PostgresStore

        return await PostgresStore.open(url)
    raise ValueError(f"store url must start with sqlite:/// or postgresql://, got {url[:16]!r}")
