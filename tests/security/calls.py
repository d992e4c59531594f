"""Helpers of the security suite: every public RPC with a valid request, called with
any credentials, and the rich details of how it failed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
from e2etest.fuzz_payloads import seed_requests
from e2etest.gateway_mesh import JWT_SECRET

from llmesh.testing.rpc import error_details
from llmesh.v1 import gateway_pb2

AUDIENCE = "llmesh"


@dataclass(frozen=True)
class Rpc:
    """One public RPC of the gateway and a valid request for it (wire bytes)."""

    service: str  # GatewayService | AdminService
    method: str
    streaming: bool
    request: bytes

    @property
    def path(self) -> str:
        return f"/llmesh.v1.{self.service}/{self.method}"


def public_rpcs() -> list[Rpc]:
    """Every RPC of the gateway's two public services."""
    seeds = seed_requests()
    return [
        Rpc(
            service.name,
            method.name,
            method.server_streaming,
            seeds.get(method.input_type.full_name, b""),
        )
        for service in gateway_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str
    message: str


def call(
    channel: grpc.Channel,
    rpc: Rpc,
    metadata: tuple[tuple[str, str], ...] = (),
    *,
    timeout_s: float = 20,
) -> Outcome:
    """Call ``rpc`` with its valid request and ``metadata``; how it ended."""
    try:
        if rpc.streaming:
            stream = channel.unary_stream(
                rpc.path, request_serializer=None, response_deserializer=None
            )
            for _ in stream(rpc.request, timeout=timeout_s, metadata=metadata):
                pass
        else:
            unary = channel.unary_unary(
                rpc.path, request_serializer=None, response_deserializer=None
            )
            unary(rpc.request, timeout=timeout_s, metadata=metadata)
    except grpc.RpcError as exc:
        info = error_details(exc).get("error_info")
        return Outcome(exc.code(), info.reason if info else "", exc.details() or "")  # type: ignore[attr-defined]
    return Outcome(grpc.StatusCode.OK, "", "")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def token(**claims: Any) -> str:
    """An HS256 JWT the mesh accepts (user of tenant acme, 60 s), with ``claims`` over it."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "jane", "tenant": "acme", "role": "user", "aud": AUDIENCE}
    base["exp"] = now + 60
    base.update(claims)
    return jwt.encode(base, JWT_SECRET, "HS256")
