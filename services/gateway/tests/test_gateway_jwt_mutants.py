"""JWT verification at its edges (kills jwt_auth.py's mutants: docs/quality.md): the
secret's length limit, which key a header picks (kid, a lone JWKS key, the PEM
fallback), required claims, leeway, optional audience/issuer, claim names, and the
message and reason of each refusal."""

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
from llmesh_gateway.principal import Principal

SECRET = b"k" * 32


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "tenant": "acme", "exp": int(time.time()) + 60, **extra}


def _hs(tmp_path: Path, **config: Any) -> JwtVerifier:
    secret = tmp_path / "hs"
    secret.write_bytes(b"  " + SECRET + b"\n")
    return JwtVerifier(JwtConfig(hs256_secret_file=secret, **config))


def _refusal(verifier: JwtVerifier, token: str) -> tuple[str, str]:
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token)
    return info.value.reason, info.value.message


# Made at import: mutation runs fork each test process from one that collected this
# module, so the (slow) 2048-bit generation happens once, not once per mutant.
_KEYS = tuple(rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab")


def _keys() -> tuple[Any, Any]:
    return _KEYS


def _jwk(key: Any, kid: str | None) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def _pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_config_enabled_by_any_key_source(tmp_path: Path) -> None:
    assert not JwtConfig().enabled
    for field in ("hs256_secret_file", "rs256_public_key_file", "jwks_file"):
        assert JwtConfig(**{field: tmp_path / "x"}).enabled
    config = JwtConfig()
    assert (config.role_claim, config.tenant_claim, config.leeway_s) == ("role", "tenant", 5.0)
    assert config.audience is None and config.issuer is None


def test_a_secret_of_32_bytes_after_stripping_is_enough(tmp_path: Path) -> None:
    verifier = _hs(tmp_path)
    token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert verifier.verify(token) == Principal("alice", "acme", "user", "jwt")
    short = tmp_path / "short"
    short.write_bytes(b" " + b"k" * 31 + b" \n")
    with pytest.raises(ValueError) as info:
        JwtVerifier(JwtConfig(hs256_secret_file=short))
    assert str(info.value) == "jwt hs256 secret must be at least 32 bytes"


def test_a_malformed_token(tmp_path: Path) -> None:
    assert _refusal(_hs(tmp_path), "not.a.jwt") == ("INVALID_CREDENTIALS", "malformed token")


def test_an_algorithm_without_a_key_is_unaccepted(tmp_path: Path) -> None:
    key, _ = _keys()
    rs_token = jwt.encode(_claims(), key, algorithm="RS256")
    assert _refusal(_hs(tmp_path), rs_token) == (
        "INVALID_CREDENTIALS",
        "token signed with an unaccepted key",
    )
    (tmp_path / "pub.pem").write_bytes(_pem(key))
    rs_only = JwtVerifier(JwtConfig(rs256_public_key_file=tmp_path / "pub.pem"))
    hs_token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert _refusal(rs_only, hs_token)[1] == "token signed with an unaccepted key"
    assert rs_only.verify(rs_token).subject == "alice"


def test_jwks_key_choice(tmp_path: Path) -> None:
    one, two = _keys()
    (tmp_path / "one.json").write_text(json.dumps({"keys": [_jwk(one, None)]}))
    lone = JwtVerifier(JwtConfig(jwks_file=tmp_path / "one.json"))
    # A single key without a kid answers a token without a kid.
    assert lone.verify(jwt.encode(_claims(), one, algorithm="RS256")).subject == "alice"
    (tmp_path / "lone_kid.json").write_text(json.dumps({"keys": [_jwk(one, "k1")]}))
    lone_kid = JwtVerifier(JwtConfig(jwks_file=tmp_path / "lone_kid.json"))
    assert lone_kid.verify(jwt.encode(_claims(), one, algorithm="RS256")).subject == "alice"
    # ... but a token naming an unknown kid is not checked against it.
    unknown = jwt.encode(_claims(), one, algorithm="RS256", headers={"kid": "zz"})
    assert _refusal(lone_kid, unknown)[1] == "token signed with an unaccepted key"

    (tmp_path / "two.json").write_text(json.dumps({"keys": [_jwk(one, "k1"), _jwk(two, "k2")]}))
    both = JwtVerifier(JwtConfig(jwks_file=tmp_path / "two.json"))
    by_kid = jwt.encode(_claims(), two, algorithm="RS256", headers={"kid": "k2"})
    assert both.verify(by_kid).subject == "alice"
    no_kid = jwt.encode(_claims(), one, algorithm="RS256")
    assert _refusal(both, no_kid)[1] == "token signed with an unaccepted key"

    # A key without a kid answers tokens without one, among other keys.
    (tmp_path / "mixed.json").write_text(json.dumps({"keys": [_jwk(one, None), _jwk(two, "k2")]}))
    mixed = JwtVerifier(JwtConfig(jwks_file=tmp_path / "mixed.json"))
    assert mixed.verify(no_kid).subject == "alice"
    assert mixed.verify(by_kid).subject == "alice"

    # Without a matching JWKS key, the PEM key (when configured) is tried.
    (tmp_path / "pub.pem").write_bytes(_pem(one))
    with_pem = JwtVerifier(
        JwtConfig(jwks_file=tmp_path / "two.json", rs256_public_key_file=tmp_path / "pub.pem")
    )
    assert with_pem.verify(no_kid).subject == "alice"
    assert with_pem.verify(by_kid).subject == "alice"


@pytest.mark.parametrize(
    ("claims", "reason", "message"),
    [
        ({"exp": None}, "INVALID_CREDENTIALS", "invalid token"),
        ({"sub": None}, "INVALID_CREDENTIALS", "invalid token"),
        ({"exp": -10}, "TOKEN_EXPIRED", "token expired"),
        ({"nbf": 600}, "TOKEN_NOT_YET_VALID", "token not yet valid"),
        ({"role": "root"}, "INVALID_CLAIMS", "token lacks a valid 'role' or 'tenant' claim"),
        ({"tenant": ""}, "INVALID_CLAIMS", "token lacks a valid 'role' or 'tenant' claim"),
        ({"tenant": None}, "INVALID_CLAIMS", "token lacks a valid 'role' or 'tenant' claim"),
    ],
)
def test_refusals(tmp_path: Path, claims: dict[str, Any], reason: str, message: str) -> None:
    now = int(time.time())
    body = _claims()
    for name, value in claims.items():
        if value is None:
            body.pop(name)
        elif name in ("exp", "nbf"):
            body[name] = now + value
        else:
            body[name] = value
    token = jwt.encode(body, SECRET, algorithm="HS256")
    assert _refusal(_hs(tmp_path, leeway_s=0), token) == (reason, message)


def test_the_leeway_applies_to_exp(tmp_path: Path) -> None:
    token = jwt.encode(_claims(exp=int(time.time()) - 30), SECRET, algorithm="HS256")
    assert _hs(tmp_path, leeway_s=120).verify(token).subject == "alice"
    assert _refusal(_hs(tmp_path, leeway_s=0), token)[0] == "TOKEN_EXPIRED"
    default = _hs(tmp_path)  # 5 s
    late = jwt.encode(_claims(exp=int(time.time()) - 2), SECRET, algorithm="HS256")
    assert default.verify(late).subject == "alice"


def test_audience_and_issuer_only_when_configured(tmp_path: Path) -> None:
    token = jwt.encode(_claims(aud="other", iss="someone"), SECRET, algorithm="HS256")
    assert _hs(tmp_path).verify(token).subject == "alice"
    for config in ({"audience": "llmesh"}, {"issuer": "idp"}):
        assert _refusal(_hs(tmp_path, **config), token) == (
            "INVALID_CREDENTIALS",
            "token audience or issuer not accepted",
        )
    good = jwt.encode(_claims(aud="llmesh", iss="idp"), SECRET, algorithm="HS256")
    assert _hs(tmp_path, audience="llmesh", issuer="idp").verify(good).subject == "alice"


def test_claim_names_are_configurable(tmp_path: Path) -> None:
    token = jwt.encode(
        {"sub": "42", "exp": int(time.time()) + 60, "grp": "admin", "org": "ops", "role": "x"},
        SECRET,
        algorithm="HS256",
    )
    verifier = _hs(tmp_path, role_claim="grp", tenant_claim="org")
    assert verifier.verify(token) == Principal("42", "ops", "admin", "jwt")
    assert _refusal(_hs(tmp_path), token) == (
        "INVALID_CLAIMS",
        "token lacks a valid 'role' or 'tenant' claim",
    )
    custom = _hs(tmp_path, role_claim="grp", tenant_claim="org")
    bad = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert _refusal(custom, bad)[1] == "token lacks a valid 'grp' or 'org' claim"
