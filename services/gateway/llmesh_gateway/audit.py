"""Audit log: auth failures, key changes and admin calls, persisted in the gateway store."""

from __future__ import annotations

import time

from llmesh.kernel.context import current_request
from llmesh.kernel.logging import get_logger
from llmesh_gateway.principal import Principal
from llmesh_gateway.store import AuditRecord, GatewayStore

log = get_logger(__name__)


class AuditLog:
    """Writes audit events; a store failure is logged, never fails the audited call."""

    def __init__(self, store: GatewayStore) -> None:
        self._store = store

    async def record(
        self,
        *,
        principal: Principal | None,
        action: str,
        outcome: str,
        detail: str = "",
    ) -> None:
        ctx = current_request()
        event = AuditRecord(
            time=time.time(),
            principal=principal.subject if principal else "anonymous",
            tenant=principal.tenant if principal else "",
            action=action,
            outcome=outcome,
            detail=detail[:1024],
            request_id=ctx.request_id if ctx else "",
        )
        try:
            await self._store.add_audit(event)
        except Exception as exc:
            log.error("could not write audit event %s/%s: %s", action, outcome, exc)
