"""API keys: created once, stored as a per-key salted HMAC-SHA256, verified in constant time.

A key reads ``lmk_<key_id>_<secret>``: the id is public (it names the record), the
secret is 256 random bits, so a fast keyed hash is as strong as a slow KDF here and
keeps authentication in the microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import duration_pb2

from llmesh.kernel.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from llmesh.kernel.timestamps import expiry
from llmesh.kernel.validation import RequestValidator
from llmesh.v1 import gateway_pb2
from llmesh_gateway.principal import ROLE_ADMIN, ROLE_USER, Principal
from llmesh_gateway.store import ApiKeyRecord, GatewayStore

KEY_PREFIX = "lmk"
_ROLE_VALUES = {ROLE_USER: gateway_pb2.ROLE_USER, ROLE_ADMIN: gateway_pb2.ROLE_ADMIN}
_NO_SUCH_KEY_SALT = secrets.token_bytes(16)


def fingerprint(secret_text: str) -> str:
    """Short SHA-256 fingerprint of a credential, safe to log."""
    return hashlib.sha256(secret_text.encode()).hexdigest()[:12]


def digest(salt: bytes, secret: str) -> bytes:
    """HMAC-SHA256 of the secret under the key's own salt."""
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def parse_key(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a token shaped like an API key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


@dataclass(frozen=True)
class CreatedKey:
    """A new key: the one-time secret and its stored record.

    ``api_key`` is empty when the call replayed an earlier ``request_id``: the
    secret is never stored, so it cannot be shown twice.
    """

    api_key: str
    record: ApiKeyRecord

    @property
    def replayed(self) -> bool:
        """Whether this is the record of a key created by an earlier call."""
        return not self.api_key


def key_id_for(request_id: str) -> str:
    """The key id of the key created for an idempotency ``request_id``.

    Derived, so a retry finds the first key by id and two racing calls collide on
    the store's unique key id; ids are public (the key's prefix), so this leaks nothing.
    """
    return hashlib.sha256(f"llmesh-api-key\0{request_id}".encode()).hexdigest()[:16]


def check_key_fields(
    contract: RequestValidator,
    *,
    name: str,
    role: str,
    tenant: str,
    ttl_seconds: float,
    request_id: str = "",
) -> None:
    """Raise ``InvalidArgument`` when a key request breaks ``CreateApiKeyRequest``'s rules.

    The contract's rules, for callers that do not come through gRPC (``llmesh keys``);
    an ``AdminService.CreateApiKey`` call was checked by the kernel already.
    """
    whole = int(ttl_seconds)
    contract.check(
        gateway_pb2.CreateApiKeyRequest(
            name=name,
            role=_ROLE_VALUES.get(role, gateway_pb2.ROLE_UNSPECIFIED),
            tenant=tenant,
            ttl=duration_pb2.Duration(seconds=whole, nanos=int((ttl_seconds - whole) * 1e9)),
            request_id=request_id,
        )
    )


class ApiKeyManager:
    """Creates, verifies, revokes and lists API keys over a ``GatewayStore``.

    Verified keys are cached for ``cache_ttl_s`` so a hot key costs no store query;
    a revocation through this manager takes effect at once, one made by another
    gateway replica within ``cache_ttl_s``.
    """

    def __init__(
        self,
        store: GatewayStore,
        *,
        cache_ttl_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKeyRecord]] = {}
        self._contract = RequestValidator()

    @property
    def store(self) -> GatewayStore:
        return self._store

    async def create(
        self, *, name: str, role: str, tenant: str, ttl_seconds: float = 0, request_id: str = ""
    ) -> CreatedKey:
        """Create a key; the returned ``api_key`` is the only copy of the secret.

        With a ``request_id``, a retry returns the first call's record (``api_key``
        empty); the same id with another name, role or tenant is ``INVALID_ARGUMENT``.
        """
        check_key_fields(
            self._contract,
            name=name,
            role=role,
            tenant=tenant,
            ttl_seconds=ttl_seconds,
            request_id=request_id,
        )
        if request_id:
            key_id = key_id_for(request_id)
            earlier = await self._store.get_key(key_id)
            if earlier is not None:
                return self._replay(earlier, name=name, role=role, tenant=tenant)
        else:
            key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        api_key = f"{KEY_PREFIX}_{key_id}_{secret}"
        salt = secrets.token_bytes(16)
        now = self._clock()
        record = ApiKeyRecord(
            key_id=key_id,
            name=name,
            role=role,
            tenant=tenant,
            created_at=now,
            expires_at=expiry(now, ttl_seconds),
            revoked_at=None,
            fingerprint=fingerprint(api_key),
            salt=salt,
            digest=digest(salt, secret),
        )
        try:
            stored = await self._store.create_key(record)
        except AlreadyExists:
            earlier = await self._store.get_key(key_id) if request_id else None
            if earlier is None:
                raise
            return self._replay(earlier, name=name, role=role, tenant=tenant)
        return CreatedKey(api_key=api_key, record=stored)

    @staticmethod
    def _replay(earlier: ApiKeyRecord, *, name: str, role: str, tenant: str) -> CreatedKey:
        if (earlier.name, earlier.role, earlier.tenant) != (name, role, tenant):
            raise InvalidArgument(
                "request_id was used for another key (different name, role or tenant)",
                reason="IDEMPOTENCY_KEY_REUSED",
                field_violations=[
                    FieldViolation("request_id", "already used for a different key request")
                ],
            )
        return CreatedKey(api_key="", record=earlier)

    async def verify(self, token: str) -> Principal:
        """The principal of a presented key; ``Unauthenticated`` when it is not valid."""
        parsed = parse_key(token)
        if parsed is None:
            raise Unauthenticated("malformed API key", reason="INVALID_CREDENTIALS")
        key_id, secret = parsed
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            record: ApiKeyRecord | None = cached[1]
        else:
            record = await self._store.get_key(key_id)
            if record is not None:
                self._cache[key_id] = (now + self._cache_ttl_s, record)
        # Compare even for unknown ids so timing does not reveal which ids exist.
        salt = record.salt if record is not None else _NO_SUCH_KEY_SALT
        expected = record.digest if record is not None else b"\0" * 32
        matches = hmac.compare_digest(digest(salt, secret), expected)
        if record is None or not matches:
            raise Unauthenticated("invalid API key", reason="INVALID_CREDENTIALS")
        if record.revoked_at is not None:
            raise Unauthenticated("API key revoked", reason="KEY_REVOKED")
        if record.expires_at is not None and record.expires_at <= now:
            raise Unauthenticated("API key expired", reason="KEY_EXPIRED")
        return Principal(subject=key_id, tenant=record.tenant, role=record.role, kind="api_key")

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key at once; ``NotFound`` when unknown."""
        record = await self._store.revoke_key(key_id, self._clock())
        self._cache.pop(key_id, None)
        if record is None:
            raise NotFound(f"no API key {key_id!r}", reason="KEY_NOT_FOUND")
        return record

    async def list(
        self, *, after_seq: int, limit: int, include_revoked: bool
    ) -> list[ApiKeyRecord]:
        """Keys after ``after_seq``, oldest first."""
        return await self._store.list_keys(
            after_seq=after_seq, limit=limit, include_revoked=include_revoked
        )
