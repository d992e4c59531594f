"""Rate-limiter paths the backend tests do not reach, over a scripted backend: disabled
limits, a token refusal that refunds the generation, refunds that cannot be written,
stream slots when the backend fails (open and closed) or cannot release."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from llmesh.kernel.errors import ResourceExhausted, Unavailable
from llmesh_gateway.principal import Principal
from llmesh_gateway.ratelimit import BucketSpec, InProcessBackend, Limits, RateLimiter

ALICE = Principal(subject="alice", tenant="t", role="user", kind="api_key")


@dataclass
class Backend:
    waits: dict[str, float] = field(default_factory=dict)  # bucket name -> wait
    fail: BaseException | None = None
    fail_release: bool = False
    takes: list[tuple[str, float]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    held: bool = True

    async def take(self, key: str, spec: BucketSpec, cost: float) -> float:
        self.takes.append((key, cost))
        if self.fail is not None:
            raise self.fail
        return self.waits.get(spec.name, 0.0) if cost > 0 else 0.0

    async def acquire_slot(self, key: str, cap: int, slot_id: str, ttl_s: float) -> bool:
        if self.fail is not None:
            raise self.fail
        return self.held

    async def release_slot(self, key: str, slot_id: str) -> None:
        if self.fail_release:
            raise ConnectionError("gone")
        self.released.append(key)

    async def close(self) -> None:
        pass


def test_a_zero_limit_is_no_bucket() -> None:
    limits = Limits(requests_per_minute=0, generations_per_minute=-1, tokens_per_minute=30)
    assert limits.bucket("requests") is None
    assert limits.bucket("generations") is None
    tokens = limits.bucket("tokens")
    assert tokens == BucketSpec("tokens", 30, 5.0)
    assert Limits(tokens_per_minute=3).bucket("tokens") == BucketSpec("tokens", 3, 1.0)


async def test_disabled_limits_admit_everything() -> None:
    backend = Backend()
    limiter = RateLimiter(
        backend,  # type: ignore[arg-type]
        Limits(
            requests_per_minute=0,
            generations_per_minute=0,
            tokens_per_minute=0,
            concurrent_streams=0,
        ),
    )
    await limiter.check_request(ALICE)
    assert await limiter.admit_generation(ALICE, 100) == 0.0
    await limiter.settle_tokens(ALICE, 100.0, 10)
    async with limiter.stream_slot(ALICE):
        pass
    assert backend.takes == [] and backend.released == []
    assert limiter.limits.concurrent_streams == 0


async def test_a_token_refusal_gives_the_generation_back() -> None:
    backend = Backend(waits={"tokens": 2.5})
    limiter = RateLimiter(backend, Limits())  # type: ignore[arg-type]
    with pytest.raises(ResourceExhausted) as info:
        await limiter.admit_generation(ALICE, 50)
    assert info.value.metadata == {"limit": "tokens"}
    assert info.value.message == "rate limit exceeded: 60000 tokens per minute; retry in 2.50s"
    assert backend.takes == [
        ("generations:alice", 1.0),
        ("tokens:alice", 50.0),
        ("generations:alice", -1.0),
    ]


async def test_a_token_refusal_without_a_generation_limit() -> None:
    backend = Backend(waits={"tokens": 1.0})
    limiter = RateLimiter(backend, Limits(generations_per_minute=0))  # type: ignore[arg-type]
    with pytest.raises(ResourceExhausted):
        await limiter.admit_generation(ALICE, 50)
    assert backend.takes == [("tokens:alice", 50.0)]


async def test_the_charge_is_capped_by_the_bucket_and_refunds_only_the_unused() -> None:
    backend = Backend()
    limiter = RateLimiter(backend, Limits(tokens_per_minute=60, generations_per_minute=0))  # type: ignore[arg-type]
    assert await limiter.admit_generation(ALICE, 1000) == 10.0
    await limiter.settle_tokens(ALICE, 10.0, 10)
    await limiter.settle_tokens(ALICE, 10.0, 12)
    await limiter.settle_tokens(ALICE, 10.0, 4)
    assert backend.takes == [("tokens:alice", 10.0), ("tokens:alice", -6.0)]


async def test_a_refund_the_backend_cannot_take_is_dropped() -> None:
    backend = Backend(fail=TimeoutError())
    limiter = RateLimiter(backend, Limits())  # type: ignore[arg-type]
    await limiter.settle_tokens(ALICE, 10.0, 4)
    assert backend.takes == [("tokens:alice", -6.0)]


async def test_a_failed_backend_opens_the_stream_slot_or_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = Backend(fail=ConnectionError("down"))
    ran = []
    with caplog.at_level(logging.WARNING):
        async with RateLimiter(backend, Limits()).stream_slot(ALICE):  # type: ignore[arg-type]
            ran.append(True)
    assert ran == [True]
    assert "rate-limit backend failed (failing open): ConnectionError" in caplog.text
    closed = RateLimiter(backend, Limits(), fail_open=False)  # type: ignore[arg-type]
    with pytest.raises(Unavailable) as info:
        async with closed.stream_slot(ALICE):
            raise AssertionError("must not run")
    assert info.value.reason == "RATE_LIMITER_UNAVAILABLE"


async def test_a_full_stream_cap_is_refused() -> None:
    limiter = RateLimiter(Backend(held=False), Limits(concurrent_streams=2))  # type: ignore[arg-type]
    with pytest.raises(ResourceExhausted) as info:
        async with limiter.stream_slot(ALICE):
            raise AssertionError("must not run")
    assert info.value.message == "rate limit exceeded: at most 2 concurrent streams"
    assert info.value.metadata == {"limit": "streams"}
    assert [(q.subject, q.description) for q in info.value.quota_violations] == [
        ("principal:alice", "2 concurrent streams")
    ]


async def test_a_slot_that_cannot_be_released_expires(caplog: pytest.LogCaptureFixture) -> None:
    backend = Backend(fail_release=True)
    with caplog.at_level(logging.WARNING):
        async with RateLimiter(backend, Limits()).stream_slot(ALICE):  # type: ignore[arg-type]
            pass
    assert "could not release a stream slot; it expires by itself" in caplog.text


async def test_in_process_slots_are_released_and_forgotten() -> None:
    backend = InProcessBackend()
    assert await backend.acquire_slot("k", 1, "s1", 60)
    assert not await backend.acquire_slot("k", 1, "s2", 60)
    await backend.release_slot("k", "s1")
    await backend.release_slot("k", "s1")
    await backend.release_slot("other", "x")
    assert await backend.acquire_slot("k", 1, "s2", 60)
