"""Redis write-through cache of hot sessions in front of any store.

Reads of a session (``GetSession``) are served from Redis when the cached entry is
complete enough; appends go to the store first (the source of truth) and then
update the entry with a Lua script that only extends an entry at exactly the prior
version. Anything else leaves a tombstone carrying the new version, so a slower
reader can never put an older copy back. Each entry lives ``ttl_s``.

Redis is optional at run time: when a call fails, the cache is bypassed for
``ttl_s`` (by then every entry written before the failure has expired, so nothing
stale is served afterwards) and the service keeps answering from the store.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from llmesh.kernel.context import statement_timeout
from llmesh.kernel.errors import DeadlineExceeded
from llmesh.kernel.logging import get_logger

from .base import (
    AppendResult,
    MemoryStore,
    MessageIn,
    NewMemory,
    PendingEmbedding,
    RememberResult,
    SearchQuery,
    SearchResult,
    SessionRecord,
    StoredAppend,
    StoredMessage,
    Vector,
)

log = get_logger(__name__)
T = TypeVar("T")

CACHED_MESSAGES = 200
DELETED_VERSION = 2**62

# KEYS: meta, list. ARGV: prior, new, now, expires ('' for none), ttl_ms, max, added, msgs...
_APPEND = """
local prior = tonumber(ARGV[1])
local v = redis.call('HGET', KEYS[1], 'version')
local partial = redis.call('HGET', KEYS[1], 'partial')
local count = tonumber(ARGV[7])
if prior == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'version', ARGV[2], 'created_at', ARGV[3], 'partial', '0')
elseif v and tonumber(v) == prior and partial == '0' then
  count = count + tonumber(redis.call('HGET', KEYS[1], 'message_count') or '0')
else
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'version', ARGV[2], 'partial', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'updated_at', ARGV[3], 'expires_at', ARGV[4],
           'message_count', tostring(count))
for i = 8, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""

# KEYS: meta, list. ARGV: version, created, updated, expires, count, ttl_ms, msgs...
_POPULATE = """
local v = redis.call('HGET', KEYS[1], 'version')
if v and tonumber(v) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'created_at', ARGV[2], 'updated_at', ARGV[3],
           'expires_at', ARGV[4], 'message_count', ARGV[5], 'partial', '0')
for i = 7, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if #ARGV >= 7 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
return 1
"""


def _opt(value: float | None) -> str:
    return "" if value is None else repr(value)


def _unopt(value: str | None) -> float | None:
    return None if not value else float(value)


class RedisSessionCache(MemoryStore):
    """``inner`` with sessions cached in Redis at ``url``."""

    def __init__(
        self,
        inner: MemoryStore,
        url: str,
        *,
        ttl_s: float = 300.0,
        op_timeout_s: float = 0.25,
        prefix: str = "llmesh:memory:",
    ) -> None:
        self.inner = inner
        self.name = f"{inner.name}+redis"
        self.ttl_ms = int(ttl_s * 1000)
        self.ttl_s = ttl_s
        self.op_timeout_s = op_timeout_s
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            decode_responses=True,
        )
        self._append = self._redis.register_script(_APPEND)
        self._populate = self._redis.register_script(_POPULATE)
        self._bypass_until = 0.0
        self.hits = 0
        self.misses = 0

    def _keys(self, namespace: str, session_id: str) -> list[str]:
        base = f"{self.prefix}{len(namespace)}:{namespace}:{session_id}"
        return [base, base + ":messages"]

    @property
    def bypassed(self) -> bool:
        """True while the cache is skipped after a Redis failure."""
        return time.monotonic() < self._bypass_until

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run a Redis operation; on failure start a bypass window and return None."""
        if self.bypassed:
            return None
        try:
            # A spent deadline counts as a failed call: a write-through skipped after
            # the store committed must bypass the (now stale) cache like any failure.
            async with asyncio.timeout(statement_timeout(self.op_timeout_s)):
                return await op()
        except (redis.exceptions.RedisError, OSError, TimeoutError, DeadlineExceeded) as exc:
            self._bypass_until = time.monotonic() + self.ttl_s
            log.warning(
                "session cache bypassed for %.0fs after a redis failure: %s",
                self.ttl_s,
                type(exc).__name__,
            )
            return None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self._redis.aclose()
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()  # readiness follows the source of truth, not the cache

    # -- sessions -------------------------------------------------------------------------

    async def append_messages(
        self,
        namespace: str,
        session_id: str,
        messages: Sequence[MessageIn],
        *,
        expected_version: int,
        idempotency_key: str,
        ttl_s: float | None,
        now: float,
        request_fingerprint: str = "",
        annotations: Mapping[str, str] | None = None,
    ) -> AppendResult:
        result = await self.inner.append_messages(
            namespace,
            session_id,
            messages,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
            ttl_s=ttl_s,
            now=now,
            request_fingerprint=request_fingerprint,
            annotations=annotations,
        )
        if not result.replayed:
            prior = result.version - 1
            expires = None if not ttl_s else now + ttl_s
            args: list[Any] = [
                prior,
                result.version,
                repr(now),
                _opt(expires),
                self.ttl_ms,
                CACHED_MESSAGES,
                len(messages),
                *(json.dumps([m.role, m.content, now]) for m in messages),
            ]
            keys = self._keys(namespace, session_id)
            await self._call(lambda: self._append(keys=keys, args=args))
        return result

    async def get_append(self, namespace: str, idempotency_key: str) -> StoredAppend | None:
        return await self.inner.get_append(namespace, idempotency_key)

    async def get_session(
        self, namespace: str, session_id: str, *, limit: int, now: float
    ) -> tuple[SessionRecord, list[StoredMessage]]:
        keys = self._keys(namespace, session_id)

        async def read() -> tuple[Mapping[str, str], list[str]]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(keys[0])
                pipe.lrange(keys[1], -limit, -1)
                meta, items = await pipe.execute()
            return meta, items

        cached = await self._call(read)
        if cached is not None:
            meta, items = cached
            if meta.get("partial") == "0" and "updated_at" in meta:
                count = int(meta["message_count"])
                expires = _unopt(meta.get("expires_at"))
                if (len(items) >= min(limit, count)) and (expires is None or expires > now):
                    self.hits += 1
                    record = SessionRecord(
                        session_id=session_id,
                        version=int(meta["version"]),
                        message_count=count,
                        created_at=float(meta["created_at"]),
                        updated_at=float(meta["updated_at"]),
                        expires_at=expires,
                    )
                    return record, [StoredMessage(*json.loads(i)) for i in items]
        self.misses += 1
        record, stored = await self.inner.get_session(namespace, session_id, limit=limit, now=now)
        if limit >= min(record.message_count, CACHED_MESSAGES):
            args: list[Any] = [
                record.version,
                repr(record.created_at),
                repr(record.updated_at),
                _opt(record.expires_at),
                record.message_count,
                self.ttl_ms,
                *(json.dumps([m.role, m.content, m.created_at]) for m in stored[-CACHED_MESSAGES:]),
            ]
            await self._call(lambda: self._populate(keys=keys, args=args))
        return record, stored

    async def list_sessions(
        self, namespace: str, *, page_size: int, after: tuple[float, str] | None, now: float
    ) -> list[SessionRecord]:
        return await self.inner.list_sessions(namespace, page_size=page_size, after=after, now=now)

    async def delete_session(self, namespace: str, session_id: str) -> int:
        deleted = await self.inner.delete_session(namespace, session_id)
        keys = self._keys(namespace, session_id)

        async def tombstone() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*keys)
                pipe.hset(keys[0], mapping={"version": DELETED_VERSION, "partial": "1"})
                pipe.pexpire(keys[0], self.ttl_ms)
                await pipe.execute()

        await self._call(tombstone)
        return deleted

    # -- memories: straight through ----------------------------------------------------------

    async def insert_memories(
        self, namespace: str, memories: Sequence[NewMemory], *, now: float
    ) -> list[RememberResult]:
        return await self.inner.insert_memories(namespace, memories, now=now)

    async def search(self, namespace: str, query: SearchQuery, *, now: float) -> SearchResult:
        return await self.inner.search(namespace, query, now=now)

    async def search_while(
        self,
        namespace: str,
        query: SearchQuery,
        vector: Awaitable[Vector | None],
        *,
        now: float,
    ) -> SearchResult:
        return await self.inner.search_while(namespace, query, vector, now=now)

    async def forget(
        self,
        namespace: str,
        *,
        ids: Sequence[str],
        metadata_filter: Mapping[str, str],
        created_before: float | None,
    ) -> int:
        return await self.inner.forget(
            namespace, ids=ids, metadata_filter=metadata_filter, created_before=created_before
        )

    async def pending_embeddings(self, *, limit: int) -> list[PendingEmbedding]:
        return await self.inner.pending_embeddings(limit=limit)

    async def set_embeddings(self, items: Sequence[tuple[str, str, Vector]]) -> int:
        return await self.inner.set_embeddings(items)

    async def purge_expired(self, *, now: float) -> int:
        return await self.inner.purge_expired(now=now)
