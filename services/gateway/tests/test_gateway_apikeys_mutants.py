"""``ApiKeyManager`` over an in-memory store with a fixed clock (kills apikeys.py's
mutants: docs/quality.md). The same contract against real SQLite and PostgreSQL is in
test_gateway_keys.py; these pin the key format, the stored record, the verify cache and
each refusal's reason."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import pytest

from llmesh.kernel.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from llmesh.kernel.validation import RequestValidator
from llmesh_gateway import apikeys
from llmesh_gateway.apikeys import (
    KEY_PREFIX,
    ApiKeyManager,
    CreatedKey,
    check_key_fields,
    digest,
    fingerprint,
    key_id_for,
    parse_key,
)
from llmesh_gateway.principal import Principal
from llmesh_gateway.store import ApiKeyRecord

NOW = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeStore:
    keys: dict[str, ApiKeyRecord] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)
    revokes: list[tuple[str, float]] = field(default_factory=list)
    lists: list[dict[str, Any]] = field(default_factory=list)
    race: ApiKeyRecord | None = None  # created by "another call" just before ours

    async def create_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        if self.race is not None:
            self.keys[self.race.key_id] = self.race
            self.race = None
        if record.key_id in self.keys:
            raise AlreadyExists("taken")
        stored = dataclasses.replace(record, seq=len(self.keys) + 1)
        self.keys[record.key_id] = stored
        return stored

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        self.gets.append(key_id)
        return self.keys.get(key_id)

    async def revoke_key(self, key_id: str, at: float) -> ApiKeyRecord | None:
        self.revokes.append((key_id, at))
        record = self.keys.get(key_id)
        if record is None:
            return None
        record = dataclasses.replace(record, revoked_at=at)
        self.keys[key_id] = record
        return record

    async def list_keys(self, **kwargs: Any) -> list[ApiKeyRecord]:
        self.lists.append(kwargs)
        return list(self.keys.values())


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(store: FakeStore, clock: Clock) -> ApiKeyManager:
    return ApiKeyManager(store, cache_ttl_s=2.0, clock=clock)  # type: ignore[arg-type]


def test_helpers() -> None:
    assert KEY_PREFIX == "lmk"
    assert fingerprint("abc") == hashlib.sha256(b"abc").hexdigest()[:12]
    assert len(fingerprint("abc")) == 12
    assert digest(b"salt", "s") == hmac.new(b"salt", b"s", hashlib.sha256).digest()
    assert key_id_for("r1") == hashlib.sha256(b"llmesh-api-key\0r1").hexdigest()[:16]
    assert key_id_for("r1") != key_id_for("r2")


@pytest.mark.parametrize(
    ("token", "parsed"),
    [
        ("lmk_abc_sec", ("abc", "sec")),
        ("lmk_abc_sec_with_underscores", ("abc", "sec_with_underscores")),
        ("lmk__sec", None),
        ("lmk_abc_", None),
        ("lmk_abc", None),
        ("xyz_abc_sec", None),
        ("LMK_abc_sec", None),
        ("", None),
    ],
)
def test_parse_key(token: str, parsed: tuple[str, str] | None) -> None:
    assert parse_key(token) == parsed


def test_created_key_replayed() -> None:
    record = ApiKeyRecord("k", "n", "user", "t", 0.0, None, None, "f", b"s", b"d")
    assert CreatedKey(api_key="", record=record).replayed
    assert not CreatedKey(api_key="lmk_k_s", record=record).replayed


async def test_create_makes_a_key_and_stores_only_its_digest(
    keys: ApiKeyManager, store: FakeStore
) -> None:
    assert keys.store is store
    created = await keys.create(name="ci", role="admin", tenant="acme", ttl_seconds=60)
    assert not created.replayed
    prefix, key_id, secret = created.api_key.split("_", 2)
    assert prefix == "lmk"
    assert len(key_id) == 16
    int(key_id, 16)
    assert len(secret) == 43
    record = created.record
    assert store.keys[key_id] == record
    assert record.seq == 1
    assert (record.key_id, record.name, record.role, record.tenant) == (
        key_id,
        "ci",
        "admin",
        "acme",
    )
    assert record.created_at == NOW
    assert record.expires_at == NOW + 60
    assert record.revoked_at is None
    assert record.fingerprint == fingerprint(created.api_key)
    assert len(record.salt) == 16
    assert record.digest == digest(record.salt, secret)
    assert secret.encode() not in record.digest
    assert store.gets == []  # no request id: nothing to look up
    second = await keys.create(name="ci", role="admin", tenant="acme")
    assert second.record.key_id != key_id
    assert second.record.salt != record.salt
    assert second.record.expires_at is None


async def test_create_checks_the_contract(keys: ApiKeyManager) -> None:
    for kwargs in (
        {"name": "", "role": "user", "tenant": "t"},
        {"name": "n", "role": "root", "tenant": "t"},
        {"name": "n", "role": "user", "tenant": "Bad Tenant"},
        {"name": "n", "role": "user", "tenant": "t", "ttl_seconds": -1},
        {"name": "n", "role": "user", "tenant": "t", "request_id": "x" * 129},
    ):
        with pytest.raises(InvalidArgument):
            await keys.create(**kwargs)  # type: ignore[arg-type]


def test_check_key_fields_sends_the_ttl_with_nanos() -> None:
    seen: list[Any] = []

    class Contract:
        def check(self, request: Any) -> None:
            seen.append(request)

    check_key_fields(
        Contract(),  # type: ignore[arg-type]
        name="n",
        role="admin",
        tenant="t",
        ttl_seconds=1.5,
        request_id="rid",
    )
    check_key_fields(Contract(), name="n", role="nobody", tenant="t", ttl_seconds=0)  # type: ignore[arg-type]
    check_key_fields(Contract(), name="n", role="user", tenant="t", ttl_seconds=1.9999999995)  # type: ignore[arg-type]
    first, second, fine = seen
    assert (fine.ttl.seconds, fine.ttl.nanos) == (1, 999_999_999)
    assert (first.name, first.tenant, first.request_id) == ("n", "t", "rid")
    assert first.role == apikeys.gateway_pb2.ROLE_ADMIN
    assert (first.ttl.seconds, first.ttl.nanos) == (1, 500_000_000)
    assert second.role == apikeys.gateway_pb2.ROLE_UNSPECIFIED
    assert second.request_id == ""
    with pytest.raises(InvalidArgument):
        check_key_fields(RequestValidator(), name="n", role="nobody", tenant="t", ttl_seconds=0)


async def test_a_request_id_makes_create_idempotent(keys: ApiKeyManager, store: FakeStore) -> None:
    first = await keys.create(name="ci", role="user", tenant="acme", request_id="r1")
    assert first.record.key_id == key_id_for("r1")
    assert first.api_key.startswith(f"lmk_{key_id_for('r1')}_")
    assert store.gets == [key_id_for("r1")]
    again = await keys.create(name="ci", role="user", tenant="acme", request_id="r1")
    assert again.replayed
    assert again.api_key == ""
    assert again.record == first.record
    assert len(store.keys) == 1
    for change in ({"name": "other"}, {"role": "admin"}, {"tenant": "else"}):
        kwargs = {"name": "ci", "role": "user", "tenant": "acme", "request_id": "r1", **change}
        with pytest.raises(InvalidArgument) as info:
            await keys.create(**kwargs)  # type: ignore[arg-type]
        assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
        assert info.value.message == (
            "request_id was used for another key (different name, role or tenant)"
        )
        assert [(v.field, v.description) for v in info.value.field_violations] == [
            ("request_id", "already used for a different key request")
        ]


async def test_a_racing_create_with_the_same_request_id_replays(
    keys: ApiKeyManager, store: FakeStore
) -> None:
    earlier = ApiKeyRecord(key_id_for("r2"), "ci", "user", "acme", 5.0, None, None, "f", b"s", b"d")
    store.race = earlier
    got = await keys.create(name="ci", role="user", tenant="acme", request_id="r2")
    assert got.replayed
    assert got.record == earlier
    store.race = dataclasses.replace(earlier, key_id=key_id_for("r3"), name="other")
    with pytest.raises(InvalidArgument):
        await keys.create(name="ci", role="user", tenant="acme", request_id="r3")


async def test_a_key_id_collision_without_request_id_is_raised(
    keys: ApiKeyManager, store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apikeys.secrets, "token_hex", lambda n: "0" * (2 * n))
    await keys.create(name="a", role="user", tenant="t")
    gets = len(store.gets)
    with pytest.raises(AlreadyExists):
        await keys.create(name="b", role="user", tenant="t")
    assert len(store.gets) == gets  # no replay lookup without a request id


async def test_verify_answers_the_principal(keys: ApiKeyManager) -> None:
    created = await keys.create(name="ci", role="admin", tenant="acme")
    got = await keys.verify(created.api_key)
    assert got == Principal(
        subject=created.record.key_id, tenant="acme", role="admin", kind="api_key"
    )


@pytest.mark.parametrize("token", ["not-a-key", "lmk__x", "lmk_x_"])
async def test_a_malformed_key(keys: ApiKeyManager, store: FakeStore, token: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        await keys.verify(token)
    assert (info.value.reason, info.value.message) == ("INVALID_CREDENTIALS", "malformed API key")
    assert store.gets == []


async def test_wrong_secret_and_unknown_id_read_the_same(keys: ApiKeyManager) -> None:
    created = await keys.create(name="ci", role="user", tenant="acme")
    key_id = created.record.key_id
    for token in (f"lmk_{key_id}_{'x' * 43}", f"lmk_{'f' * 16}_{'x' * 43}"):
        with pytest.raises(Unauthenticated) as info:
            await keys.verify(token)
        assert (info.value.reason, info.value.message) == ("INVALID_CREDENTIALS", "invalid API key")


async def test_verified_keys_are_cached_for_the_ttl(
    keys: ApiKeyManager, store: FakeStore, clock: Clock
) -> None:
    created = await keys.create(name="ci", role="user", tenant="acme")
    key_id = created.record.key_id
    await keys.verify(created.api_key)
    assert store.gets == [key_id]
    clock.now = NOW + 1.999
    await keys.verify(created.api_key)
    assert store.gets == [key_id]
    clock.now = NOW + 2.0  # the entry cached at NOW lives until NOW + 2.0, exclusive
    await keys.verify(created.api_key)
    assert store.gets == [key_id, key_id]
    # A revocation by another replica (straight in the store) applies after the TTL.
    store.keys[key_id] = dataclasses.replace(store.keys[key_id], revoked_at=NOW)
    clock.now = NOW + 3.9
    await keys.verify(created.api_key)
    clock.now = NOW + 4.0
    with pytest.raises(Unauthenticated) as info:
        await keys.verify(created.api_key)
    assert info.value.reason == "KEY_REVOKED"


async def test_unknown_ids_are_not_cached(keys: ApiKeyManager, store: FakeStore) -> None:
    token = f"lmk_{'a' * 16}_secret"
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await keys.verify(token)
    assert store.gets == ["a" * 16, "a" * 16]


async def test_revoke_applies_at_once_and_unknown_is_not_found(
    keys: ApiKeyManager, store: FakeStore, clock: Clock
) -> None:
    created = await keys.create(name="ci", role="user", tenant="acme")
    key_id = created.record.key_id
    await keys.verify(created.api_key)  # cached
    clock.now = NOW + 0.5
    revoked = await keys.revoke(key_id)
    assert revoked.revoked_at == NOW + 0.5
    assert store.revokes == [(key_id, NOW + 0.5)]
    with pytest.raises(Unauthenticated) as info:
        await keys.verify(created.api_key)
    assert (info.value.reason, info.value.message) == ("KEY_REVOKED", "API key revoked")
    with pytest.raises(NotFound) as missing:
        await keys.revoke("nope")
    assert (missing.value.reason, missing.value.message) == ("KEY_NOT_FOUND", "no API key 'nope'")


async def test_expiry_is_exclusive(keys: ApiKeyManager, clock: Clock) -> None:
    created = await keys.create(name="ci", role="user", tenant="acme", ttl_seconds=10)
    clock.now = NOW + 9.999
    await keys.verify(created.api_key)
    keys._cache.clear()
    clock.now = NOW + 10
    with pytest.raises(Unauthenticated) as info:
        await keys.verify(created.api_key)
    assert (info.value.reason, info.value.message) == ("KEY_EXPIRED", "API key expired")


async def test_list_passes_the_page_through(keys: ApiKeyManager, store: FakeStore) -> None:
    await keys.create(name="ci", role="user", tenant="acme")
    listed = await keys.list(after_seq=3, limit=7, include_revoked=True)
    assert listed == list(store.keys.values())
    assert store.lists == [{"after_seq": 3, "limit": 7, "include_revoked": True}]


def test_manager_defaults(store: FakeStore) -> None:
    manager = ApiKeyManager(store)  # type: ignore[arg-type]
    assert manager._cache_ttl_s == 2.0
    assert manager._clock is apikeys.time.time
    assert manager._cache == {}
