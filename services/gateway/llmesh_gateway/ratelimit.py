"""Per-principal admission: token buckets and a concurrent-stream cap.

Three buckets per principal: ``requests`` (cheap calls per minute), ``generations``
(generation calls per minute) and ``tokens`` (generated tokens per minute: a call is
charged its ``max_tokens`` up front and refunded what it did not use). A fourth limit
caps concurrent generation streams. Backends: in-process (one replica) or Redis with
atomic Lua scripts (replicas share limits). When Redis fails the limiter fails open or
closed as configured and counts it in a metric.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from llmesh.kernel.errors import QuotaViolation, ResourceExhausted, Unavailable
from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import meter
from llmesh_gateway.principal import Principal

log = get_logger(__name__)


@dataclass(frozen=True)
class BucketSpec:
    """A token bucket: ``capacity`` tokens (the burst), refilled at ``per_minute``."""

    name: str
    per_minute: float
    capacity: float

    @property
    def refill_per_s(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True)
class Limits:
    """Per-principal limits; 0 disables a limit."""

    requests_per_minute: float = 600.0
    generations_per_minute: float = 120.0
    tokens_per_minute: float = 60000.0
    concurrent_streams: int = 8
    burst_seconds: float = 10.0  # bucket capacity = this many seconds of refill (min 1)
    stream_slot_ttl_s: float = 3600.0

    def bucket(self, name: str) -> BucketSpec | None:
        per_minute = {
            "requests": self.requests_per_minute,
            "generations": self.generations_per_minute,
            "tokens": self.tokens_per_minute,
        }[name]
        if per_minute <= 0:
            return None
        return BucketSpec(name, per_minute, max(1.0, per_minute / 60.0 * self.burst_seconds))


class RateLimitBackend(Protocol):
    """Where bucket and slot state lives."""

    async def take(self, key: str, spec: BucketSpec, cost: float) -> float:
        """Take ``cost`` tokens (negative refunds); 0.0 when allowed, else seconds to wait."""

    async def acquire_slot(self, key: str, cap: int, slot_id: str, ttl_s: float) -> bool:
        """Hold one of ``cap`` slots; False when all are held."""

    async def release_slot(self, key: str, slot_id: str) -> None:
        """Give a slot back."""

    async def close(self) -> None:
        """Release connections."""


class InProcessBackend:
    """Buckets and slots in this process's memory (one gateway replica)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._slots: dict[str, set[str]] = {}

    async def take(self, key: str, spec: BucketSpec, cost: float) -> float:
        now = self._clock()
        tokens, stamp = self._buckets.get(key, (spec.capacity, now))
        tokens = min(spec.capacity, tokens + max(0.0, now - stamp) * spec.refill_per_s)
        cost = min(cost, spec.capacity)
        if cost <= 0 or cost <= tokens:
            self._buckets[key] = (min(spec.capacity, tokens - cost), now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / spec.refill_per_s

    async def acquire_slot(self, key: str, cap: int, slot_id: str, ttl_s: float) -> bool:
        held = self._slots.setdefault(key, set())
        if len(held) >= cap:
            return False
        held.add(slot_id)
        return True

    async def release_slot(self, key: str, slot_id: str) -> None:
        held = self._slots.get(key)
        if held is not None:
            held.discard(slot_id)
            if not held:
                del self._slots[key]

    async def close(self) -> None:
        return None


_TAKE_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local data = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(data[1]) or capacity
local ts = tonumber(data[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
if cost > capacity then cost = capacity end
local wait = 0
if cost <= 0 or cost <= tokens then
  tokens = math.min(capacity, tokens - cost)
else
  wait = math.ceil((cost - tokens) / rate)
  if wait < 1 then wait = 1 end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return wait
"""

_ACQUIRE_LUA = """
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
if redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""


class RedisBackend:
    """Buckets and slots in Redis, each update one atomic Lua script (shared by replicas)."""

    def __init__(self, url: str, *, prefix: str = "llmesh:rl:", timeout_s: float = 0.25) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._prefix = prefix
        self._take = self._redis.register_script(_TAKE_LUA)
        self._acquire = self._redis.register_script(_ACQUIRE_LUA)

    async def take(self, key: str, spec: BucketSpec, cost: float) -> float:
        wait_ms = await self._take(
            keys=[self._prefix + key],
            args=[repr(spec.capacity), repr(spec.refill_per_s / 1000.0), repr(float(cost))],
        )
        return int(wait_ms) / 1000.0

    async def acquire_slot(self, key: str, cap: int, slot_id: str, ttl_s: float) -> bool:
        held = await self._acquire(
            keys=[self._prefix + key], args=[cap, slot_id, int(ttl_s * 1000)]
        )
        return bool(int(held))

    async def release_slot(self, key: str, slot_id: str) -> None:
        await self._redis.zrem(self._prefix + key, slot_id)

    async def close(self) -> None:
        await self._redis.aclose()


_BACKEND_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)


def _backend_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (*_BACKEND_ERRORS, redis.RedisError)


class RateLimiter:
    """Admission for one principal's calls, raising ``ResourceExhausted`` when over a limit."""

    def __init__(
        self, backend: RateLimitBackend, limits: Limits, *, fail_open: bool = True
    ) -> None:
        self._backend = backend
        self._limits = limits
        self._fail_open = fail_open
        self._errors = _backend_errors()
        m = meter("llmesh.gateway")
        self._rejections = m.create_counter(
            "gateway.ratelimit.rejections", description="Calls refused by a rate limit"
        )
        self._backend_failures = m.create_counter(
            "gateway.ratelimit.backend_failures",
            description="Rate-limit backend errors, by the mode applied (open/closed)",
        )

    @property
    def limits(self) -> Limits:
        return self._limits

    async def _guard_take(self, key: str, spec: BucketSpec, cost: float) -> float:
        try:
            return await self._backend.take(key, spec, cost)
        except self._errors as exc:
            self._backend_down(exc)
            return 0.0

    def _backend_down(self, exc: BaseException) -> None:
        mode = "open" if self._fail_open else "closed"
        self._backend_failures.add(1, {"mode": mode})
        log.warning("rate-limit backend failed (failing %s): %s", mode, type(exc).__name__)
        if not self._fail_open:
            raise Unavailable(
                "rate limiter unavailable", reason="RATE_LIMITER_UNAVAILABLE", retry_after_s=1.0
            ) from exc

    def _refuse(self, principal: Principal, limit: str, description: str, wait_s: float) -> None:
        self._rejections.add(1, {"limit": limit})
        raise ResourceExhausted(
            f"rate limit exceeded: {description}; retry in {wait_s:.2f}s",
            reason="RATE_LIMITED",
            metadata={"limit": limit},
            retry_after_s=wait_s,
            quota_violations=[QuotaViolation(f"principal:{principal.subject}", description)],
        )

    async def check_request(self, principal: Principal) -> None:
        """Admit one cheap call (memory, embeddings, listings, admin)."""
        spec = self._limits.bucket("requests")
        if spec is None:
            return
        wait = await self._guard_take(f"requests:{principal.subject}", spec, 1.0)
        if wait > 0:
            self._refuse(principal, "requests", f"{spec.per_minute:g} requests per minute", wait)

    async def admit_generation(self, principal: Principal, max_tokens: int) -> float:
        """Admit a generation charging ``max_tokens``; returns the tokens charged."""
        gens = self._limits.bucket("generations")
        if gens is not None:
            wait = await self._guard_take(f"generations:{principal.subject}", gens, 1.0)
            if wait > 0:
                self._refuse(
                    principal, "generations", f"{gens.per_minute:g} generations per minute", wait
                )
        tokens = self._limits.bucket("tokens")
        if tokens is None:
            return 0.0
        charge = min(float(max_tokens), tokens.capacity)
        wait = await self._guard_take(f"tokens:{principal.subject}", tokens, charge)
        if wait > 0:
            if gens is not None:
                await self._guard_take(f"generations:{principal.subject}", gens, -1.0)
            self._refuse(principal, "tokens", f"{tokens.per_minute:g} tokens per minute", wait)
        return charge

    async def settle_tokens(self, principal: Principal, charged: float, used: int) -> None:
        """Refund the part of an up-front charge that was not generated."""
        tokens = self._limits.bucket("tokens")
        refund = charged - used
        if tokens is None or refund <= 0:
            return
        try:
            await self._backend.take(f"tokens:{principal.subject}", tokens, -refund)
        except self._errors:
            return  # a lost refund only errs on the strict side

    @asynccontextmanager
    async def stream_slot(self, principal: Principal) -> AsyncIterator[None]:
        """Hold one of the principal's concurrent-stream slots for the block."""
        cap = self._limits.concurrent_streams
        if cap <= 0:
            yield
            return
        key = f"streams:{principal.subject}"
        slot_id = uuid.uuid4().hex
        try:
            held = await self._backend.acquire_slot(
                key, cap, slot_id, self._limits.stream_slot_ttl_s
            )
        except self._errors as exc:
            self._backend_down(exc)
            yield
            return
        if not held:
            self._rejections.add(1, {"limit": "streams"})
            raise ResourceExhausted(
                f"rate limit exceeded: at most {cap} concurrent streams",
                reason="RATE_LIMITED",
                metadata={"limit": "streams"},
                retry_after_s=1.0,
                quota_violations=[
                    QuotaViolation(f"principal:{principal.subject}", f"{cap} concurrent streams")
                ],
            )
        try:
            yield
        finally:
            try:
                await self._backend.release_slot(key, slot_id)
            except self._errors:
                log.warning("could not release a stream slot; it expires by itself")

    async def close(self) -> None:
        await self._backend.close()
