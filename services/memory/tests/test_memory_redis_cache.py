"""The Redis session cache: hot reads from Redis, and the service keeps working without it."""

from __future__ import annotations

import uuid
from pathlib import Path

from llmesh.testing.servers import RedisServer, start_redis
from llmesh_memory.store.base import MessageIn
from llmesh_memory.store.redis_cache import RedisSessionCache
from llmesh_memory.store.sqlite import SqliteStore

NS = "t"
NOW = 1_700_000_000.0


def turn(text: str) -> list[MessageIn]:
    return [MessageIn(2, text)]


async def test_hot_session_is_served_from_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    inner = SqliteStore(tmp_path / "m.db")
    store = RedisSessionCache(inner, redis_server.url, prefix=f"{uuid.uuid4().hex}:")
    await store.start()
    try:
        for v in range(3):
            await store.append_messages(
                NS,
                "hot",
                turn(f"m{v}"),
                expected_version=v,
                idempotency_key="",
                ttl_s=None,
                now=NOW + v,
            )
        record, messages = await store.get_session(NS, "hot", limit=10, now=NOW + 5)
        assert store.hits == 1 and store.misses == 0  # written through, never read from SQL
        truth = await inner.get_session(NS, "hot", limit=10, now=NOW + 5)
        assert (record, messages) == truth
        # A session written before the cache existed: miss, populate, then hit.
        await inner.append_messages(
            NS, "cold", turn("old"), expected_version=0, idempotency_key="", ttl_s=None, now=NOW
        )
        await store.get_session(NS, "cold", limit=10, now=NOW)
        await store.get_session(NS, "cold", limit=10, now=NOW)
        assert (store.hits, store.misses) == (2, 1)
        await store.delete_session(NS, "hot")
        await store.append_messages(
            NS, "hot", turn("again"), expected_version=0, idempotency_key="", ttl_s=None, now=NOW
        )
        record, messages = await store.get_session(NS, "hot", limit=10, now=NOW)
        assert record.version == 1 and [m.content for m in messages] == ["again"]
    finally:
        await store.close()


async def test_service_keeps_working_when_redis_dies(tmp_path: Path) -> None:
    redis = start_redis()
    store = RedisSessionCache(SqliteStore(tmp_path / "m.db"), redis.url, ttl_s=60)
    await store.start()
    try:
        await store.append_messages(
            NS, "s", turn("before"), expected_version=0, idempotency_key="", ttl_s=None, now=NOW
        )
        redis.stop()
        result = await store.append_messages(
            NS,
            "s",
            turn("during"),
            expected_version=1,
            idempotency_key="k",
            ttl_s=None,
            now=NOW + 1,
        )
        assert result.version == 2 and store.bypassed
        record, messages = await store.get_session(NS, "s", limit=10, now=NOW + 2)
        assert record.version == 2
        assert [m.content for m in messages] == ["before", "during"]
    finally:
        await store.close()
