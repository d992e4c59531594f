"""API key store and manager against real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from llmesh.kernel.errors import InvalidArgument, NotFound, Unauthenticated
from llmesh_gateway.apikeys import ApiKeyManager, parse_key
from llmesh_gateway.store import (
    AuditRecord,
    GatewayStore,
    decode_page_token,
    encode_page_token,
)
from llmesh_gateway.store_factory import open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[GatewayStore]:
    store = await open_store(f"sqlite:///{tmp_path / 'gw.db'}")
    yield store
    await store.close()


async def test_key_is_returned_once_and_stored_only_hashed(
    sqlite_store: GatewayStore, tmp_path: Path
) -> None:
    keys = ApiKeyManager(sqlite_store)
    created = await keys.create(name="ci", role="user", tenant="acme")
    key_id, secret = parse_key(created.api_key) or ("", "")
    assert key_id == created.record.key_id
    record = await sqlite_store.get_key(key_id)
    assert record is not None
    assert secret.encode() not in record.digest and record.digest != secret.encode()
    # The secret appears nowhere in the database file.
    raw = (tmp_path / "gw.db").read_bytes() + (tmp_path / "gw.db-wal").read_bytes()
    assert secret.encode() not in raw
    principal = await keys.verify(created.api_key)
    assert (principal.subject, principal.tenant, principal.role) == (key_id, "acme", "user")


async def test_wrong_secret_unknown_id_and_malformed_are_unauthenticated(
    sqlite_store: GatewayStore,
) -> None:
    keys = ApiKeyManager(sqlite_store)
    created = await keys.create(name="ci", role="admin", tenant="ops")
    key_id = created.record.key_id
    for token in (
        f"lmk_{key_id}_{'x' * 43}",
        f"lmk_{'0' * 16}_{'x' * 43}",
        "lmk__abc",
        "not-a-key",
    ):
        with pytest.raises(Unauthenticated):
            await keys.verify(token)


async def test_revoke_takes_effect_at_once_and_expiry(sqlite_store: GatewayStore) -> None:
    clock = Clock()
    keys = ApiKeyManager(sqlite_store, cache_ttl_s=60, clock=clock)
    created = await keys.create(name="a", role="user", tenant="t1", ttl_seconds=100)
    await keys.verify(created.api_key)  # cached now
    revoked = await keys.revoke(created.record.key_id)
    assert revoked.revoked_at == clock.now
    with pytest.raises(Unauthenticated) as info:
        await keys.verify(created.api_key)
    assert info.value.reason == "KEY_REVOKED"
    other = await keys.create(name="b", role="user", tenant="t1", ttl_seconds=100)
    await keys.verify(other.api_key)
    clock.now += 101
    with pytest.raises(Unauthenticated) as info:
        await keys.verify(other.api_key)
    assert info.value.reason == "KEY_EXPIRED"
    with pytest.raises(NotFound):
        await keys.revoke("00000000")


async def test_create_validates_each_field(sqlite_store: GatewayStore) -> None:
    keys = ApiKeyManager(sqlite_store)
    with pytest.raises(InvalidArgument) as info:
        await keys.create(name="", role="root", tenant="Bad Tenant", ttl_seconds=-1)
    fields = {v.field for v in info.value.field_violations}
    assert fields == {"name", "role", "tenant", "ttl"}
    # A lifetime past 10 years is refused before anything is stored.
    with pytest.raises(InvalidArgument) as info:
        await keys.create(name="n", role="user", tenant="t", ttl_seconds=10**12)
    assert {v.field for v in info.value.field_violations} == {"ttl"}
    assert await keys.list(after_seq=0, limit=10, include_revoked=True) == []


async def test_create_with_a_request_id_is_idempotent(sqlite_store: GatewayStore) -> None:
    keys = ApiKeyManager(sqlite_store)
    first = await keys.create(name="ci", role="user", tenant="t", request_id="req-1")
    assert first.api_key and not first.replayed
    again = await keys.create(name="ci", role="user", tenant="t", request_id="req-1")
    # The same record, no second key; the secret is never shown twice.
    assert again.replayed and again.api_key == ""
    assert again.record.key_id == first.record.key_id
    assert again.record.fingerprint == first.record.fingerprint
    await keys.verify(first.api_key)
    other = await keys.create(name="ci", role="user", tenant="t", request_id="req-2")
    assert other.record.key_id != first.record.key_id and other.api_key
    with pytest.raises(InvalidArgument) as info:
        await keys.create(name="ci", role="admin", tenant="t", request_id="req-1")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_concurrent_creates_with_one_request_id_make_one_key(
    sqlite_store: GatewayStore,
) -> None:
    keys = ApiKeyManager(sqlite_store)
    made = await asyncio.gather(
        *(keys.create(name="x", role="user", tenant="t", request_id="same") for _ in range(5))
    )
    assert len({m.record.key_id for m in made}) == 1
    assert sum(1 for m in made if m.api_key) == 1


async def test_list_pages_and_hides_revoked(sqlite_store: GatewayStore) -> None:
    keys = ApiKeyManager(sqlite_store)
    made = [await keys.create(name=f"k{i}", role="user", tenant="t") for i in range(3)]
    await keys.revoke(made[1].record.key_id)
    active = await keys.list(after_seq=0, limit=10, include_revoked=False)
    assert [r.name for r in active] == ["k0", "k2"]
    first = await keys.list(after_seq=0, limit=2, include_revoked=True)
    rest = await keys.list(after_seq=first[-1].seq, limit=2, include_revoked=True)
    assert [r.name for r in first + rest] == ["k0", "k1", "k2"]


async def test_audit_newest_first_and_page_tokens(sqlite_store: GatewayStore) -> None:
    for i in range(3):
        await sqlite_store.add_audit(
            AuditRecord(
                time=float(i),
                principal="p",
                tenant="t",
                action=f"a{i}",
                outcome="OK",
                detail="",
                request_id="r",
            )
        )
    page = await sqlite_store.list_audit(before_seq=None, limit=2)
    assert [e.action for e in page] == ["a2", "a1"]
    token = encode_page_token("a", page[-1].seq)
    rest = await sqlite_store.list_audit(before_seq=decode_page_token("a", token), limit=2)
    assert [e.action for e in rest] == ["a0"]
    with pytest.raises(InvalidArgument) as info:
        decode_page_token("a", "garbage!")
    assert info.value.field_violations[0].field == "page_token"
    with pytest.raises(InvalidArgument):
        decode_page_token("a", encode_page_token("k", 3))


@pytest.mark.slow
async def test_postgres_store_same_contract(postgres_dsn_factory: Callable[[], str]) -> None:
    store = await open_store(postgres_dsn_factory())
    try:
        keys = ApiKeyManager(store, cache_ttl_s=0)
        created = await keys.create(name="pg", role="admin", tenant="ops", ttl_seconds=60)
        principal = await keys.verify(created.api_key)
        assert principal.role == "admin" and principal.tenant == "ops"
        await keys.revoke(created.record.key_id)
        with pytest.raises(Unauthenticated):
            await keys.verify(created.api_key)
        listed = await keys.list(after_seq=0, limit=10, include_revoked=True)
        assert [r.key_id for r in listed] == [created.record.key_id]
        await store.add_audit(
            AuditRecord(
                time=1.0,
                principal="p",
                tenant="t",
                action="x",
                outcome="OK",
                detail="d",
                request_id="r",
            )
        )
        events = await store.list_audit(before_seq=None, limit=5)
        assert [e.action for e in events] == ["x"]
    finally:
        await store.close()
