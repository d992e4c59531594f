"""The gateway's own store: API keys (hashed) and the audit log.

One interface, two backends: SQLite (embedded default) and PostgreSQL. Page tokens are
opaque to clients; a bad one raises ``InvalidArgument`` naming ``page_token``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from llmesh.kernel.errors import invalid


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored API key: never its secret, only a per-key salt and HMAC digest."""

    key_id: str
    name: str
    role: str
    tenant: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    fingerprint: str
    salt: bytes
    digest: bytes
    seq: int = 0


@dataclass(frozen=True)
class AuditRecord:
    """One audited action (who, what, when, outcome)."""

    time: float
    principal: str
    tenant: str
    action: str
    outcome: str
    detail: str
    request_id: str
    seq: int = 0


class GatewayStore(Protocol):
    """Storage of API keys and audit events."""

    async def create_key(self, record: ApiKeyRecord) -> ApiKeyRecord:
        """Insert a key; returns it with its sequence number. ``AlreadyExists`` when
        its key id is taken."""

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id, revoked or not; None when unknown."""

    async def revoke_key(self, key_id: str, at: float) -> ApiKeyRecord | None:
        """Mark a key revoked (keeps the first revocation time); None when unknown."""

    async def list_keys(
        self, *, after_seq: int, limit: int, include_revoked: bool
    ) -> list[ApiKeyRecord]:
        """Keys with ``seq > after_seq``, oldest first."""

    async def add_audit(self, event: AuditRecord) -> None:
        """Append an audit event."""

    async def add_audits(self, events: Sequence[AuditRecord]) -> None:
        """Append audit events in one transaction (all or none)."""

    async def list_audit(self, *, before_seq: int | None, limit: int) -> list[AuditRecord]:
        """Audit events with ``seq < before_seq`` (all when None), newest first."""

    async def ping(self) -> None:
        """Raise when the store does not answer."""

    async def close(self) -> None:
        """Release connections."""


def encode_page_token(kind: str, seq: int) -> str:
    """An opaque page token for the row after/before ``seq``."""
    return base64.urlsafe_b64encode(f"{kind}:{seq}".encode()).decode().rstrip("=")


def decode_page_token(kind: str, token: str) -> int | None:
    """The sequence number in a page token; None for an empty token."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        raw = base64.urlsafe_b64decode(padded.encode()).decode()
        prefix, _, number = raw.partition(":")
        if prefix != kind:
            raise ValueError(prefix)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid("page_token", "not a token returned by this method") from exc
