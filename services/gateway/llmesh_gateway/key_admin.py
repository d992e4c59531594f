"""API key administration: the one code path behind AdminService's key methods and
``llmesh keys``.

Both callers run these functions inside an audited call (:meth:`AuditLog.audited`):
the gRPC admin methods through the auth interceptor, the CLI through
:func:`cli_call` with the principal ``cli:<os user>``. Each function notes what it
did (key id, role, tenant, fingerprint; never a secret) as the event's detail.
"""

from __future__ import annotations

import contextlib
import getpass
import uuid
from collections.abc import AsyncIterator

from llmesh.kernel.context import RequestContext, current_request, reset_request, set_request
from llmesh_gateway.apikeys import ApiKeyManager, CreatedKey
from llmesh_gateway.audit import AuditLog
from llmesh_gateway.store import ApiKeyRecord

ADMIN_SERVICE = "/llmesh.v1.AdminService/"
CREATE = ADMIN_SERVICE + "CreateApiKey"
REVOKE = ADMIN_SERVICE + "RevokeApiKey"
LIST = ADMIN_SERVICE + "ListApiKeys"


def note_detail(text: str) -> None:
    """Set the audit detail of the call being served (kept to the audit event)."""
    ctx = current_request()
    if ctx is not None:
        ctx.attributes["audit_detail"] = text


async def create_key(
    keys: ApiKeyManager,
    *,
    name: str,
    role: str,
    tenant: str,
    ttl_s: float = 0.0,
    request_id: str = "",
) -> CreatedKey:
    """Create a key (see :meth:`ApiKeyManager.create`); the secret is in the result only."""
    created = await keys.create(
        name=name, role=role, tenant=tenant, ttl_seconds=ttl_s, request_id=request_id
    )
    record = created.record
    note_detail(
        f"{'replayed' if created.replayed else 'created'} key_id={record.key_id}"
        f" role={record.role} tenant={record.tenant} fingerprint={record.fingerprint}"
    )
    return created


async def revoke_key(keys: ApiKeyManager, key_id: str) -> ApiKeyRecord:
    """Revoke a key at once; ``NotFound`` when unknown."""
    note_detail(f"revoked key_id={key_id}")
    return await keys.revoke(key_id)


async def list_keys(
    keys: ApiKeyManager, *, after_seq: int, limit: int, include_revoked: bool
) -> list[ApiKeyRecord]:
    """Keys after ``after_seq``, oldest first."""
    return await keys.list(after_seq=after_seq, limit=limit, include_revoked=include_revoked)


def cli_principal() -> str:
    """The audited principal of a command run on this machine: ``cli:<os user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


@contextlib.asynccontextmanager
async def cli_call(audit: AuditLog, action: str) -> AsyncIterator[RequestContext]:
    """Run a CLI command as an audited admin call (request id, principal, outcome)."""
    ctx = RequestContext(request_id=uuid.uuid4().hex, method=action)
    token = set_request(ctx)
    try:
        async with audit.audited(principal=cli_principal(), action=action):
            yield ctx
    finally:
        reset_request(token)
