"""Every public RPC refuses a caller without valid credentials (UNAUTHENTICATED), every
admin RPC refuses a user (PERMISSION_DENIED), and no forged, tampered, expired,
wrong-audience or unsigned JWT gets in: each with its stable ErrorInfo reason, and no
credential echoed in a message.

Extends tests/test_e2e_gateway_auth.py (one RPC per outcome) to every RPC and every
token forgery; services/gateway/tests/test_gateway_jwt.py holds the verifier's unit
cases.
"""

from __future__ import annotations

import base64
import json
import time

import grpc
import jwt
import pytest
from e2etest.gateway_mesh import JWT_SECRET, Mesh
from fuzz.report import record

from security.calls import AUDIENCE, Outcome, Rpc, bearer, call, public_rpcs, token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

RPCS = public_rpcs()
ADMIN = [r for r in RPCS if r.service == "AdminService"]
USER = [r for r in RPCS if r.service == "GatewayService"]

NO_CREDENTIALS: dict[str, tuple[tuple[str, str], ...]] = {
    "none": (),
    "basic": (("authorization", "Basic YWRtaW46YWRtaW4="),),
    "empty bearer": (("authorization", "Bearer "),),
    "unknown key": bearer("lmk_0000000000_" + "A" * 43),
    "garbage": bearer("not-a-key-or-token"),
    "other header": (("x-api-key", "lmk_0000000000_" + "B" * 43),),
}


def test_every_public_rpc_without_valid_credentials_is_unauthenticated(
    security_mesh: Mesh,
) -> None:
    seen: dict[str, int] = {}
    with grpc.insecure_channel(security_mesh.gateway) as channel:
        for rpc in RPCS:
            for name, metadata in NO_CREDENTIALS.items():
                got = call(channel, rpc, metadata)
                assert got.code == grpc.StatusCode.UNAUTHENTICATED, (rpc.path, name, got)
                assert got.reason in ("MISSING_CREDENTIALS", "INVALID_CREDENTIALS"), got
                for _key, value in metadata:
                    secret = value.removeprefix("Bearer ").removeprefix("Basic ")
                    assert not secret or secret not in got.message, got
                seen[got.reason] = seen.get(got.reason, 0) + 1
    record("unauthenticated", {"rpcs": len(RPCS), "calls": sum(seen.values()), "reasons": seen})
    assert len(RPCS) == 19


def test_admin_rpcs_refuse_users_and_admit_admins(security_mesh: Mesh) -> None:
    user_jwt = token()
    with grpc.insecure_channel(security_mesh.gateway) as channel:
        for rpc in ADMIN:
            for who, metadata in (
                ("user key", bearer(security_mesh.keys["alice"])),
                ("user JWT", bearer(user_jwt)),
            ):
                got = call(channel, rpc, metadata)
                assert got.code == grpc.StatusCode.PERMISSION_DENIED, (rpc.path, who, got)
                assert got.reason == "ROLE_REQUIRED", got
            # The same request from an admin passes authorization (whatever it answers).
            admitted = call(channel, rpc, bearer(security_mesh.keys["admin"]))
            assert admitted.code not in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            ), (rpc.path, admitted)
        # A user's own RPCs are open to it (the refusals above are about the role).
        for rpc in USER:
            got = call(channel, rpc, bearer(security_mesh.keys["alice"]))
            assert got.code not in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            ), (rpc.path, got)


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forgeries() -> dict[str, tuple[str, str]]:
    """Name -> (token, the reason it must be refused with)."""
    now = int(time.time())
    good = token()
    header, payload, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    admin_claims = {**claims, "role": "admin", "tenant": "ops"}
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    return {
        "payload swapped (role admin), signature kept": (
            f"{header}.{_b64(admin_claims)}.{signature}",
            "INVALID_CREDENTIALS",
        ),
        "signature altered": (f"{header}.{payload}.{flipped}", "INVALID_CREDENTIALS"),
        "signature stripped": (f"{header}.{payload}.", "INVALID_CREDENTIALS"),
        "expired": (token(exp=now - 600), "TOKEN_EXPIRED"),
        "not yet valid": (token(nbf=now + 600), "TOKEN_NOT_YET_VALID"),
        "wrong audience": (token(aud="someone-else"), "INVALID_CREDENTIALS"),
        "no expiry": (
            jwt.encode({k: v for k, v in claims.items() if k != "exp"}, JWT_SECRET, "HS256"),
            "INVALID_CREDENTIALS",
        ),
        "alg none": (
            f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(admin_claims)}.",
            "INVALID_CREDENTIALS",
        ),
        "alg None, admin": (
            jwt.encode(admin_claims, None, algorithm="none"),
            "INVALID_CREDENTIALS",
        ),
        "other secret": (jwt.encode(admin_claims, b"k" * 48, "HS256"), "INVALID_CREDENTIALS"),
        "HS512 with the secret": (
            jwt.encode(admin_claims, JWT_SECRET, "HS512"),
            "INVALID_CREDENTIALS",
        ),
        "role not a role": (token(role="root"), "INVALID_CLAIMS"),
        "tenant forged as a pattern": (token(tenant="../ops"), "INVALID_CLAIMS"),
        "not a JWT": ("a.b.c", "INVALID_CREDENTIALS"),
    }


@pytest.mark.parametrize("target", ["GatewayService/ListModels", "AdminService/ListWorkers"])
def test_forged_and_invalid_jwts_are_refused(security_mesh: Mesh, target: str) -> None:
    rpc = next(r for r in RPCS if r.path.endswith(target))
    refused: dict[str, Outcome] = {}
    with grpc.insecure_channel(security_mesh.gateway) as channel:
        for name, (forged, reason) in _forgeries().items():
            got = call(channel, rpc, bearer(forged))
            assert got.code == grpc.StatusCode.UNAUTHENTICATED, (name, got)
            assert got.reason == reason, (name, got)
            for part in forged.split("."):
                assert len(part) < 8 or part not in got.message, (name, got)
            refused[name] = got
        # The genuine token works (the forgeries above differ from it in one way each).
        ok = call(channel, rpc, bearer(token(role="admin", tenant="ops")))
        assert ok.code == grpc.StatusCode.OK, ok
    record(f"jwt_forgeries {target}", {n: o.reason for n, o in refused.items()})
    assert AUDIENCE == "llmesh"


def test_an_rpc_that_is_not_the_gateways_is_unimplemented_not_open(security_mesh: Mesh) -> None:
    """The gateway serves only its own services: a caller cannot reach an internal
    service's RPC through it."""
    with grpc.insecure_channel(security_mesh.gateway) as channel:
        for path in (
            "/llmesh.v1.MemoryService/Recall",
            "/llmesh.v1.RegistryService/Register",
            "/llmesh.v1.InferenceService/Generate",
        ):
            rpc = Rpc(path.split("/")[1].split(".")[-1], path.rsplit("/", 1)[1], False, b"")
            got = call(channel, rpc, bearer(security_mesh.keys["admin"]))
            assert got.code == grpc.StatusCode.UNIMPLEMENTED, (path, got)
