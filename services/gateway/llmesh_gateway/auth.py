"""Authentication and authorization: the kernel guard and the authenticator.

Every call but health and reflection needs ``authorization: Bearer <api key | JWT>``.
:class:`AuthGuard` runs inside the kernel interceptor, after the request is decoded and
validated (:mod:`llmesh.kernel.guards`). The principal goes into the kernel's request
context; the AdminService needs role admin. Auth failures are audited here (admin calls
by the AdminService); cheap calls are rate-limited here (generation calls are admitted
by the servicer, which knows ``max_tokens``).
"""

from __future__ import annotations

from typing import Any

import grpc

from llmesh.kernel.context import current_request
from llmesh.kernel.errors import PermissionDenied, Unauthenticated, Unavailable
from llmesh.kernel.logging import fingerprint as log_fingerprint
from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import meter
from llmesh_gateway.apikeys import ApiKeyManager, parse_key
from llmesh_gateway.audit import AuditLog
from llmesh_gateway.jwt_auth import JwtVerifier
from llmesh_gateway.principal import ROLE_ADMIN, ROLE_USER, Principal
from llmesh_gateway.ratelimit import RateLimiter

log = get_logger(__name__)

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_PREFIX = "/llmesh.v1.AdminService/"
GENERATION_METHODS = frozenset(
    {
        "/llmesh.v1.GatewayService/Generate",
        "/llmesh.v1.GatewayService/GenerateStream",
        "/llmesh.v1.GatewayService/Chat",
    }
)


class Authenticator:
    """Turns a bearer token into a ``Principal`` (API key or JWT)."""

    def __init__(self, keys: ApiKeyManager, jwt_verifier: JwtVerifier | None = None) -> None:
        self.keys = keys
        self.jwt = jwt_verifier

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated(
                "missing credentials: send 'authorization: Bearer <api key or JWT>'",
                reason="MISSING_CREDENTIALS",
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "authorization must be 'Bearer <api key or JWT>'", reason="INVALID_CREDENTIALS"
            )
        if parse_key(token) is not None:
            return await self.keys.verify(token)
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.verify(token)
        raise Unauthenticated("unrecognised credentials", reason="INVALID_CREDENTIALS")


def current_principal() -> Principal:
    """The authenticated principal of the call being served (set by the interceptor)."""
    ctx = current_request()
    principal = ctx.principal if ctx is not None else None
    if not isinstance(principal, Principal):
        raise Unauthenticated("no authenticated principal", reason="MISSING_CREDENTIALS")
    return principal


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


class AuthGuard:
    """Authenticates, authorizes by role, audits refusals and rate-limits cheap calls
    (a :class:`llmesh.kernel.guards.Guard`)."""

    def __init__(self) -> None:
        self._deps: tuple[Authenticator, AuditLog, RateLimiter] | None = None
        m = meter("llmesh.gateway")
        self._rejections = m.create_counter(
            "gateway.auth.rejections", description="Calls refused by authentication or role"
        )

    def bind(self, authenticator: Authenticator, audit: AuditLog, limiter: RateLimiter) -> None:
        """Attach the dependencies (created after the server, in the service set-up)."""
        self._deps = (authenticator, audit, limiter)

    def unbind(self) -> None:
        self._deps = None

    def applies(self, method: str) -> bool:
        return not method.startswith(PUBLIC_PREFIXES)

    async def check(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self.admit(method, _authorization(context))

    async def admit(self, method: str, authorization: str | None) -> Principal:
        """Authenticate and authorize one call; installs the principal in the context."""
        if self._deps is None:
            raise Unavailable("gateway is starting", reason="NOT_READY", retry_after_s=1.0)
        authenticator, audit, limiter = self._deps
        try:
            principal = await authenticator.authenticate(authorization)
        except Unauthenticated as exc:
            self._rejections.add(1, {"outcome": "UNAUTHENTICATED"})
            detail = exc.reason
            if authorization:
                detail += f" credential={log_fingerprint(authorization.partition(' ')[2])}"
            await audit.record(
                principal=None, action=method, outcome="UNAUTHENTICATED", detail=detail
            )
            raise
        needed = ROLE_ADMIN if method.startswith(ADMIN_PREFIX) else ROLE_USER
        if not principal.allows(needed):
            self._rejections.add(1, {"outcome": "PERMISSION_DENIED"})
            await audit.record(
                principal=principal,
                action=method,
                outcome="PERMISSION_DENIED",
                detail=f"role {principal.role} lacks {needed}",
            )
            raise PermissionDenied(
                f"role {principal.role!r} may not call {method}",
                reason="ROLE_REQUIRED",
                metadata={"required_role": needed},
            )
        ctx = current_request()
        if ctx is not None:
            ctx.principal = principal
        if method not in GENERATION_METHODS:
            await limiter.check_request(principal)
        return principal
