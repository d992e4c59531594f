"""Rate limits: in-process and Redis (atomic Lua) buckets, stream caps, fail open/closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmesh.kernel.errors import ResourceExhausted, Unavailable
from llmesh.testing.servers import RedisServer, free_port
from llmesh_gateway.principal import Principal
from llmesh_gateway.ratelimit import (
    InProcessBackend,
    Limits,
    RateLimitBackend,
    RateLimiter,
    RedisBackend,
)

ALICE = Principal(subject="alice", tenant="t", role="user", kind="api_key")
BOB = Principal(subject="bob", tenant="t", role="user", kind="api_key")
LIMITS = Limits(
    requests_per_minute=60,
    generations_per_minute=60,
    tokens_per_minute=600,
    concurrent_streams=2,
    burst_seconds=3,  # 3 requests, 3 generations, 30 tokens of burst
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def backend(request: Any, redis_server: RedisServer) -> AsyncIterator[RateLimitBackend]:
    if request.param == "memory":
        yield InProcessBackend()
        return
    prefix = f"test:{request.node.name}:"
    redis_backend = RedisBackend(redis_server.url, prefix=prefix)
    yield redis_backend
    await redis_backend.close()


async def test_request_bucket_refuses_with_retry_info_and_quota(
    backend: RateLimitBackend,
) -> None:
    limiter = RateLimiter(backend, LIMITS)
    for _ in range(3):
        await limiter.check_request(ALICE)
    with pytest.raises(ResourceExhausted) as info:
        await limiter.check_request(ALICE)
    error = info.value
    assert error.retry_after_s is not None and 0 < error.retry_after_s <= 1.1
    assert error.quota_violations[0].subject == "principal:alice"
    assert error.reason == "RATE_LIMITED"
    status = error.to_status()
    assert len(status.details) == 3  # ErrorInfo, QuotaFailure, RetryInfo
    await limiter.check_request(BOB)  # per principal


async def test_token_budget_charges_max_tokens_and_refunds(backend: RateLimitBackend) -> None:
    limiter = RateLimiter(backend, LIMITS)
    charged = await limiter.admit_generation(ALICE, 20)
    assert charged == 20
    with pytest.raises(ResourceExhausted) as info:
        await limiter.admit_generation(ALICE, 20)  # 10 left of 30
    assert info.value.metadata["limit"] == "tokens"
    await limiter.settle_tokens(ALICE, charged, used=5)  # refund 15 -> 25 left
    assert await limiter.admit_generation(ALICE, 20) == 20


async def test_generation_bucket(backend: RateLimitBackend) -> None:
    limiter = RateLimiter(backend, LIMITS)
    for _ in range(3):
        await limiter.admit_generation(BOB, 1)
    with pytest.raises(ResourceExhausted) as info:
        await limiter.admit_generation(BOB, 1)
    assert info.value.metadata["limit"] == "generations"


async def test_concurrent_stream_cap(backend: RateLimitBackend) -> None:
    limiter = RateLimiter(backend, LIMITS)
    async with limiter.stream_slot(ALICE), limiter.stream_slot(ALICE):
        with pytest.raises(ResourceExhausted) as info:
            async with limiter.stream_slot(ALICE):
                pass
        assert info.value.metadata["limit"] == "streams"
        assert info.value.retry_after_s is not None
    async with limiter.stream_slot(ALICE):  # released again
        pass


async def test_in_process_refill_over_time() -> None:
    clock = Clock()
    limiter = RateLimiter(InProcessBackend(clock), LIMITS)
    for _ in range(3):
        await limiter.check_request(ALICE)
    with pytest.raises(ResourceExhausted):
        await limiter.check_request(ALICE)
    clock.now += 1.0  # one request per second refills
    await limiter.check_request(ALICE)


async def test_redis_down_fails_open_or_closed() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    open_limiter = RateLimiter(RedisBackend(dead, timeout_s=0.2), LIMITS, fail_open=True)
    await open_limiter.check_request(ALICE)
    async with open_limiter.stream_slot(ALICE):
        pass
    closed = RateLimiter(RedisBackend(dead, timeout_s=0.2), LIMITS, fail_open=False)
    with pytest.raises(Unavailable) as info:
        await closed.check_request(ALICE)
    assert info.value.reason == "RATE_LIMITER_UNAVAILABLE"
    await open_limiter.close()
    await closed.close()


async def test_redis_limits_are_shared_between_replicas(redis_server: RedisServer) -> None:
    first = RateLimiter(RedisBackend(redis_server.url, prefix="shared:"), LIMITS)
    second = RateLimiter(RedisBackend(redis_server.url, prefix="shared:"), LIMITS)
    await first.check_request(ALICE)
    await second.check_request(ALICE)
    await first.check_request(ALICE)
    with pytest.raises(ResourceExhausted):
        await second.check_request(ALICE)
    await first.close()
    await second.close()
