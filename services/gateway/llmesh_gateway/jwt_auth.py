"""JWT bearer tokens: HS256 with a shared secret file, RS256 with a public key or JWKS file.

``exp`` and ``nbf`` are always checked when present (``exp`` is required); ``aud`` and
``iss`` when configured. The role and tenant come from configurable claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from llmesh.kernel.errors import Unauthenticated
from llmesh_gateway.principal import ROLE_USER, ROLES, TENANT_PATTERN, Principal


@dataclass(frozen=True)
class JwtConfig:
    """Where the verification keys are and which claims to require."""

    hs256_secret_file: Path | None = None
    rs256_public_key_file: Path | None = None
    jwks_file: Path | None = None
    audience: str | None = None
    issuer: str | None = None
    role_claim: str = "role"
    tenant_claim: str = "tenant"
    leeway_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return any((self.hs256_secret_file, self.rs256_public_key_file, self.jwks_file))


class JwtVerifier:
    """Verifies bearer JWTs against the configured keys."""

    def __init__(self, config: JwtConfig) -> None:
        self._config = config
        self._hs_secret: bytes | None = None
        self._rs_key: Any = None
        self._jwks: dict[str, Any] = {}
        if config.hs256_secret_file is not None:
            self._hs_secret = config.hs256_secret_file.read_bytes().strip()
            if len(self._hs_secret) < 32:
                raise ValueError("jwt hs256 secret must be at least 32 bytes")
        if config.rs256_public_key_file is not None:
            pem = config.rs256_public_key_file.read_bytes()
            self._rs_key = load_pem_public_key(pem)
        if config.jwks_file is not None:
            key_set = jwt.PyJWKSet.from_json(config.jwks_file.read_text())
            self._jwks = {key.key_id or "": key for key in key_set.keys}

    def _key_for(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed token", reason="INVALID_CREDENTIALS") from exc
        algorithm = header.get("alg")
        if algorithm == "HS256" and self._hs_secret is not None:
            return self._hs_secret, "HS256"
        if algorithm == "RS256":
            kid = header.get("kid")
            if self._jwks:
                key = self._jwks.get(kid or "") or (
                    next(iter(self._jwks.values())) if len(self._jwks) == 1 and not kid else None
                )
                if key is not None:
                    return key.key, "RS256"
            if self._rs_key is not None:
                return self._rs_key, "RS256"
        raise Unauthenticated("token signed with an unaccepted key", reason="INVALID_CREDENTIALS")

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; ``Unauthenticated`` otherwise."""
        key, algorithm = self._key_for(token)
        config = self._config
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": config.audience is not None,
                    "verify_iss": config.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("token not yet valid", reason="TOKEN_NOT_YET_VALID") from exc
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as exc:
            raise Unauthenticated(
                "token audience or issuer not accepted", reason="INVALID_CREDENTIALS"
            ) from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid token", reason="INVALID_CREDENTIALS") from exc
        role = str(claims.get(config.role_claim, ROLE_USER))
        tenant = str(claims.get(config.tenant_claim, ""))
        if role not in ROLES or not TENANT_PATTERN.match(tenant):
            raise Unauthenticated(
                f"token lacks a valid {config.role_claim!r} or {config.tenant_claim!r} claim",
                reason="INVALID_CLAIMS",
            )
        return Principal(subject=str(claims["sub"]), tenant=tenant, role=role, kind="jwt")
