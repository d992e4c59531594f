"""``AuthGuard`` and ``Authenticator`` in process, with recording fakes for the key
manager, JWT verifier, audit log, rate limiter and counter (kills auth.py's and
principal.py's mutants: docs/quality.md). The end-to-end outcomes are in
test_gateway_service.py; these pin each branch's status, reason, audit record and
metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from llmesh.kernel.context import RequestContext, current_request, reset_request, set_request
from llmesh.kernel.errors import PermissionDenied, Unauthenticated, Unavailable
from llmesh.kernel.logging import fingerprint
from llmesh_gateway import auth
from llmesh_gateway.auth import (
    ADMIN_PREFIX,
    GENERATION_METHODS,
    PUBLIC_PREFIXES,
    Authenticator,
    AuthGuard,
    current_principal,
)
from llmesh_gateway.principal import ROLE_ADMIN, ROLE_USER, ROLES, TENANT_PATTERN, Principal

USER = Principal(subject="k1", tenant="t1", role=ROLE_USER, kind="api_key")
ADMIN = Principal(subject="k2", tenant="t1", role=ROLE_ADMIN, kind="api_key")
JWT_USER = Principal(subject="sub", tenant="t2", role=ROLE_USER, kind="jwt")
API_KEY = "lmk_abc_secretsecret"
JWT = "aaa.bbb.ccc"


@dataclass
class FakeKeys:
    principal: Principal = USER
    error: Exception | None = None
    seen: list[str] = field(default_factory=list)

    async def verify(self, token: str) -> Principal:
        self.seen.append(token)
        if self.error is not None:
            raise self.error
        return self.principal


@dataclass
class FakeJwt:
    seen: list[str] = field(default_factory=list)

    def verify(self, token: str) -> Principal:
        self.seen.append(token)
        return JWT_USER


@dataclass
class FakeAudit:
    records: list[dict[str, Any]] = field(default_factory=list)

    async def record(self, **kwargs: Any) -> None:
        self.records.append(kwargs)


@dataclass
class FakeLimiter:
    checked: list[Principal] = field(default_factory=list)

    async def check_request(self, principal: Principal) -> None:
        self.checked.append(principal)


@dataclass
class FakeCounter:
    adds: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    def add(self, amount: int, attributes: dict[str, str]) -> None:
        self.adds.append((amount, attributes))


@dataclass
class Rig:
    guard: AuthGuard
    keys: FakeKeys
    jwt: FakeJwt
    audit: FakeAudit
    limiter: FakeLimiter
    counter: FakeCounter


@pytest.fixture
def rig() -> Rig:
    keys, jwt, audit, limiter, counter = (
        FakeKeys(),
        FakeJwt(),
        FakeAudit(),
        FakeLimiter(),
        FakeCounter(),
    )
    guard = AuthGuard()
    guard._rejections = counter  # type: ignore[assignment]
    guard.bind(Authenticator(keys, jwt), audit, limiter)  # type: ignore[arg-type]
    return Rig(guard, keys, jwt, audit, limiter, counter)


# --- Authenticator --------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, ""])
async def test_missing_credentials(authorization: str | None) -> None:
    keys = FakeKeys()
    with pytest.raises(Unauthenticated) as info:
        await Authenticator(keys, FakeJwt()).authenticate(authorization)  # type: ignore[arg-type]
    assert info.value.reason == "MISSING_CREDENTIALS"
    assert (
        info.value.message == "missing credentials: send 'authorization: Bearer <api key or JWT>'"
    )
    assert keys.seen == []


@pytest.mark.parametrize(
    "authorization", ["Basic abc", "Bearer", "Bearer    ", "Bearerlmk_a_b", "Token lmk_a_b", " "]
)
async def test_a_scheme_other_than_bearer_or_no_token(authorization: str) -> None:
    keys = FakeKeys()
    with pytest.raises(Unauthenticated) as info:
        await Authenticator(keys, FakeJwt()).authenticate(authorization)  # type: ignore[arg-type]
    assert info.value.reason == "INVALID_CREDENTIALS"
    assert info.value.message == "authorization must be 'Bearer <api key or JWT>'"
    assert keys.seen == []


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {API_KEY}", f"bearer {API_KEY}", f"BEARER {API_KEY}", f"  Bearer  {API_KEY}  "],
)
async def test_an_api_key_goes_to_the_key_manager(authorization: str) -> None:
    keys, jwt = FakeKeys(), FakeJwt()
    authenticator = Authenticator(keys, jwt)  # type: ignore[arg-type]
    assert authenticator.keys is keys
    assert authenticator.jwt is jwt
    assert await authenticator.authenticate(authorization) is USER
    assert keys.seen == [API_KEY]
    assert jwt.seen == []


async def test_a_jwt_goes_to_the_verifier() -> None:
    keys, jwt = FakeKeys(), FakeJwt()
    got = await Authenticator(keys, jwt).authenticate(f"Bearer {JWT}")  # type: ignore[arg-type]
    assert got is JWT_USER
    assert jwt.seen == [JWT]
    assert keys.seen == []


@pytest.mark.parametrize("token", ["a.b", "a.b.c.d", "plain", "lmk__x"])
async def test_other_tokens_are_unrecognised(token: str) -> None:
    keys, jwt = FakeKeys(), FakeJwt()
    with pytest.raises(Unauthenticated) as info:
        await Authenticator(keys, jwt).authenticate(f"Bearer {token}")  # type: ignore[arg-type]
    assert info.value.reason == "INVALID_CREDENTIALS"
    assert info.value.message == "unrecognised credentials"
    assert keys.seen == [] and jwt.seen == []


async def test_without_jwt_a_jwt_is_unrecognised() -> None:
    authenticator = Authenticator(FakeKeys())  # type: ignore[arg-type]
    assert authenticator.jwt is None
    with pytest.raises(Unauthenticated) as info:
        await authenticator.authenticate(f"Bearer {JWT}")
    assert info.value.message == "unrecognised credentials"


# --- current_principal, _authorization ------------------------------------------------


def test_current_principal() -> None:
    with pytest.raises(Unauthenticated) as info:
        current_principal()
    assert info.value.reason == "MISSING_CREDENTIALS"
    assert info.value.message == "no authenticated principal"
    token = set_request(RequestContext("r", "/m", principal="not a principal"))
    try:
        with pytest.raises(Unauthenticated):
            current_principal()
    finally:
        reset_request(token)
    token = set_request(RequestContext("r", "/m", principal=USER))
    try:
        assert current_principal() is USER
    finally:
        reset_request(token)


class FakeServicerContext:
    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Any:
        return self._metadata


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, None),
        ((), None),
        ((("x-other", "v"), ("authorization", "Bearer a")), "Bearer a"),
        ((("authorization", "first"), ("authorization", "second")), "first"),
        ((("authorization", b"bytes"),), None),
        ((("Authorization-x", "v"),), None),
    ],
)
def test_authorization_header(metadata: Any, expected: str | None) -> None:
    assert auth._authorization(FakeServicerContext(metadata)) == expected  # type: ignore[arg-type]


async def test_check_reads_the_header(rig: Rig) -> None:
    context = FakeServicerContext((("authorization", f"Bearer {API_KEY}"),))
    await rig.guard.check("/llmesh.v1.GatewayService/Embed", object(), context)  # type: ignore[arg-type]
    assert rig.keys.seen == [API_KEY]
    with pytest.raises(Unauthenticated) as info:
        await rig.guard.check("/llmesh.v1.GatewayService/Embed", object(), FakeServicerContext(()))  # type: ignore[arg-type]
    assert info.value.reason == "MISSING_CREDENTIALS"


# --- AuthGuard ------------------------------------------------------------------------


def test_the_counter_is_created_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, str, dict[str, Any]]] = []

    class Meter:
        def create_counter(self, name: str, **kwargs: Any) -> FakeCounter:
            made.append((name, "", kwargs))
            return FakeCounter()

    def fake_meter(name: str) -> Meter:
        made.append(("meter", name, {}))
        return Meter()

    monkeypatch.setattr(auth, "meter", fake_meter)
    guard = AuthGuard()
    assert made == [
        ("meter", "llmesh.gateway", {}),
        (
            "gateway.auth.rejections",
            "",
            {"description": "Calls refused by authentication or role"},
        ),
    ]
    assert isinstance(guard._rejections, FakeCounter)
    assert guard._deps is None


def test_applies_to_everything_but_health_and_reflection() -> None:
    guard = AuthGuard()
    assert PUBLIC_PREFIXES == ("/grpc.health.v1.Health/", "/grpc.reflection.")
    assert not guard.applies("/grpc.health.v1.Health/Check")
    assert not guard.applies("/grpc.reflection.v1alpha.ServerReflection/Info")
    assert guard.applies("/llmesh.v1.GatewayService/Generate")
    assert guard.applies("/llmesh.v1.AdminService/ListWorkers")
    assert guard.applies("/x/grpc.health.v1.Health/Check")


@pytest.mark.parametrize("unbind", [False, True])
async def test_before_bind_or_after_unbind_the_gateway_is_starting(rig: Rig, unbind: bool) -> None:
    guard = rig.guard if unbind else AuthGuard()
    if unbind:
        guard.unbind()
        assert guard._deps is None
    with pytest.raises(Unavailable) as info:
        await guard.admit("/llmesh.v1.GatewayService/Embed", f"Bearer {API_KEY}")
    assert info.value.reason == "NOT_READY"
    assert info.value.retry_after_s == 1.0
    assert info.value.message == "gateway is starting"


async def test_an_unauthenticated_call_is_counted_audited_and_raised(rig: Rig) -> None:
    rig.keys.error = Unauthenticated("API key revoked", reason="KEY_REVOKED")
    with pytest.raises(Unauthenticated) as info:
        await rig.guard.admit("/llmesh.v1.GatewayService/Embed", f"Bearer {API_KEY}")
    assert info.value is rig.keys.error
    assert rig.counter.adds == [(1, {"outcome": "UNAUTHENTICATED"})]
    assert rig.audit.records == [
        {
            "principal": None,
            "action": "/llmesh.v1.GatewayService/Embed",
            "outcome": "UNAUTHENTICATED",
            "detail": f"KEY_REVOKED credential={fingerprint(API_KEY)}",
        }
    ]
    assert rig.limiter.checked == []


async def test_the_audited_fingerprint_is_of_everything_after_the_scheme(rig: Rig) -> None:
    with pytest.raises(Unauthenticated):
        await rig.guard.admit("/llmesh.v1.GatewayService/Embed", "Bearer two words")
    assert rig.audit.records[0]["detail"] == (
        f"INVALID_CREDENTIALS credential={fingerprint('two words')}"
    )


async def test_missing_credentials_are_audited_without_a_fingerprint(rig: Rig) -> None:
    with pytest.raises(Unauthenticated):
        await rig.guard.admit("/llmesh.v1.MemoryService/Recall", None)
    assert rig.audit.records == [
        {
            "principal": None,
            "action": "/llmesh.v1.MemoryService/Recall",
            "outcome": "UNAUTHENTICATED",
            "detail": "MISSING_CREDENTIALS",
        }
    ]
    assert rig.counter.adds == [(1, {"outcome": "UNAUTHENTICATED"})]


async def test_a_user_may_not_call_the_admin_service(rig: Rig) -> None:
    method = f"{ADMIN_PREFIX}ListWorkers"
    assert ADMIN_PREFIX == "/llmesh.v1.AdminService/"
    with pytest.raises(PermissionDenied) as info:
        await rig.guard.admit(method, f"Bearer {API_KEY}")
    assert info.value.reason == "ROLE_REQUIRED"
    assert info.value.metadata == {"required_role": "admin"}
    assert info.value.message == f"role 'user' may not call {method}"
    assert rig.counter.adds == [(1, {"outcome": "PERMISSION_DENIED"})]
    assert rig.audit.records == [
        {
            "principal": USER,
            "action": method,
            "outcome": "PERMISSION_DENIED",
            "detail": "role user lacks admin",
        }
    ]
    assert rig.limiter.checked == []


async def test_an_admin_is_admitted_to_both_services(rig: Rig) -> None:
    rig.keys.principal = ADMIN
    assert await rig.guard.admit(f"{ADMIN_PREFIX}ListWorkers", f"Bearer {API_KEY}") is ADMIN
    assert await rig.guard.admit("/llmesh.v1.GatewayService/Embed", f"Bearer {API_KEY}") is ADMIN
    assert rig.limiter.checked == [ADMIN, ADMIN]
    assert rig.counter.adds == []
    assert rig.audit.records == []


async def test_a_cheap_call_is_rate_limited_and_installs_the_principal(rig: Rig) -> None:
    ctx = RequestContext("r", "/llmesh.v1.GatewayService/Embed")
    token = set_request(ctx)
    try:
        got = await rig.guard.admit("/llmesh.v1.GatewayService/Embed", f"Bearer {API_KEY}")
    finally:
        reset_request(token)
    assert got is USER
    assert ctx.principal is USER
    assert rig.limiter.checked == [USER]
    assert rig.counter.adds == [] and rig.audit.records == []


async def test_without_a_request_context_admit_still_answers(rig: Rig) -> None:
    assert current_request() is None
    assert await rig.guard.admit("/llmesh.v1.GatewayService/Embed", f"Bearer {JWT}") is JWT_USER


@pytest.mark.parametrize("method", sorted(GENERATION_METHODS))
async def test_generation_calls_are_limited_by_the_servicer_not_here(rig: Rig, method: str) -> None:
    assert await rig.guard.admit(method, f"Bearer {API_KEY}") is USER
    assert rig.limiter.checked == []


def test_generation_methods() -> None:
    assert {
        "/llmesh.v1.GatewayService/Generate",
        "/llmesh.v1.GatewayService/GenerateStream",
        "/llmesh.v1.GatewayService/Chat",
    } == GENERATION_METHODS


# --- Principal ------------------------------------------------------------------------


def test_principal_roles() -> None:
    assert ROLES == ("user", "admin")
    assert ADMIN.is_admin and not USER.is_admin
    assert ADMIN.allows(ROLE_ADMIN) and ADMIN.allows(ROLE_USER)
    assert USER.allows(ROLE_USER) and not USER.allows(ROLE_ADMIN)
    assert not Principal("s", "t", "guest", "jwt").allows(ROLE_USER)
    assert Principal("s", "t", "guest", "jwt").allows("guest")


@pytest.mark.parametrize(
    ("tenant", "ok"),
    [("t1", True), ("a_b-c", True), ("x" * 64, True), ("x" * 65, False), ("", False), ("T", False)],
)
def test_tenant_pattern(tenant: str, ok: bool) -> None:
    assert bool(TENANT_PATTERN.match(tenant)) is ok
