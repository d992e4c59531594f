"""JWT verification: HS256 secret file, RS256 PEM and JWKS; exp/nbf/aud/iss checks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from llmesh.kernel.errors import Unauthenticated
from llmesh_gateway.jwt_auth import JwtConfig, JwtVerifier

SECRET = b"s" * 48


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "tenant": "acme", "role": "user", "exp": now + 60, **extra}


@pytest.fixture
def hs_verifier(tmp_path: Path) -> JwtVerifier:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    return JwtVerifier(
        JwtConfig(hs256_secret_file=secret, audience="llmesh", issuer="idp", leeway_s=0)
    )


def test_hs256_valid_token(hs_verifier: JwtVerifier) -> None:
    token = jwt.encode(_claims(aud="llmesh", iss="idp"), SECRET, algorithm="HS256")
    principal = hs_verifier.verify(token)
    assert (principal.subject, principal.tenant, principal.role, principal.kind) == (
        "alice",
        "acme",
        "user",
        "jwt",
    )


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 10}, "TOKEN_EXPIRED"),
        ({"nbf": int(time.time()) + 600}, "TOKEN_NOT_YET_VALID"),
        ({"aud": "someone-else"}, "INVALID_CREDENTIALS"),
        ({"iss": "evil"}, "INVALID_CREDENTIALS"),
        ({"role": "root"}, "INVALID_CLAIMS"),
        ({"tenant": "Not Valid"}, "INVALID_CLAIMS"),
    ],
)
def test_hs256_rejections(hs_verifier: JwtVerifier, claims: dict[str, Any], reason: str) -> None:
    token = jwt.encode(_claims(**{"aud": "llmesh", "iss": "idp", **claims}), SECRET, "HS256")
    with pytest.raises(Unauthenticated) as info:
        hs_verifier.verify(token)
    assert info.value.reason == reason


def test_wrong_key_and_alg_none_rejected(hs_verifier: JwtVerifier) -> None:
    forged = jwt.encode(_claims(aud="llmesh", iss="idp"), b"x" * 48, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        hs_verifier.verify(forged)
    unsigned = jwt.encode(_claims(aud="llmesh", iss="idp"), "", algorithm="none")
    with pytest.raises(Unauthenticated):
        hs_verifier.verify(unsigned)
    with pytest.raises(Unauthenticated):
        hs_verifier.verify("a.b.c")


def _rsa() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem


def test_rs256_public_key_and_jwks(tmp_path: Path) -> None:
    key, pem = _rsa()
    (tmp_path / "pub.pem").write_bytes(pem)
    verifier = JwtVerifier(JwtConfig(rs256_public_key_file=tmp_path / "pub.pem"))
    token = jwt.encode(_claims(role="admin"), key, algorithm="RS256")
    assert verifier.verify(token).role == "admin"

    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "RS256", "use": "sig"})
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    jwks = JwtVerifier(JwtConfig(jwks_file=tmp_path / "jwks.json"))
    signed = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})
    assert jwks.verify(signed).subject == "alice"
    other_key, _ = _rsa()
    forged = jwt.encode(_claims(), other_key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Unauthenticated):
        jwks.verify(forged)
    # An HS256 token signed with the public key as secret (alg confusion) is refused.
    confused = jwt.encode(_claims(), b"p" * 64, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        jwks.verify(confused)


def test_short_hs_secret_refused(tmp_path: Path) -> None:
    (tmp_path / "s").write_bytes(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        JwtVerifier(JwtConfig(hs256_secret_file=tmp_path / "s"))
