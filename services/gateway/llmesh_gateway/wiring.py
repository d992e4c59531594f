"""Wiring: the gateway's components on a ``ServiceHost`` (used by ``app.py`` and tests).

Every service package has a ``wiring.py`` with ``SERVICE_NAMES`` and ``wire(host, settings)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from llmesh.kernel.channels import create_channel
from llmesh.kernel.server import ServiceHost
from llmesh.kernel.tasks import Supervisor
from llmesh.kernel.upstream import Share
from llmesh.v1 import gateway_pb2_grpc, memory_pb2_grpc, registry_pb2_grpc
from llmesh_gateway.admin import AdminServicer
from llmesh_gateway.apikeys import ApiKeyManager
from llmesh_gateway.audit import AuditLog
from llmesh_gateway.auth import Authenticator, AuthGuard
from llmesh_gateway.balancer import Balancer, RetryBudget
from llmesh_gateway.chat import ChatBudget, ChatPrompt
from llmesh_gateway.chat_inflight import TurnsInFlight
from llmesh_gateway.jwt_auth import JwtConfig, JwtVerifier
from llmesh_gateway.ratelimit import (
    InProcessBackend,
    Limits,
    RateLimitBackend,
    RateLimiter,
    RedisBackend,
)
from llmesh_gateway.registry_cache import RegistryCache, RegistryWatcher
from llmesh_gateway.router import Router
from llmesh_gateway.servicer import GatewayServicer
from llmesh_gateway.settings import GatewaySettings
from llmesh_gateway.store_factory import open_store
from llmesh_gateway.upstream import ChannelPool

SERVICE_NAMES = ("llmesh.v1.GatewayService", "llmesh.v1.AdminService")


@dataclass
class Gateway:
    """Handles on a running gateway's parts (tests poke at them)."""

    cache: RegistryCache
    watcher: RegistryWatcher
    balancer: Balancer
    router: Router
    keys: ApiKeyManager
    limiter: RateLimiter
    audit: AuditLog
    chat_inflight: TurnsInFlight


def jwt_verifier(settings: GatewaySettings) -> JwtVerifier | None:
    jwt = settings.jwt
    config = JwtConfig(
        hs256_secret_file=jwt.hs256_secret_file,
        rs256_public_key_file=jwt.rs256_public_key_file,
        jwks_file=jwt.jwks_file,
        audience=jwt.audience,
        issuer=jwt.issuer,
        role_claim=jwt.role_claim,
        tenant_claim=jwt.tenant_claim,
        leeway_s=jwt.leeway_s,
    )
    return JwtVerifier(config) if config.enabled else None


def rate_limiter(settings: GatewaySettings) -> RateLimiter:
    rl = settings.rate_limit
    backend: RateLimitBackend
    if rl.backend == "redis":
        assert rl.redis_url is not None
        backend = RedisBackend(rl.redis_url, timeout_s=rl.redis_timeout_s)
    else:
        backend = InProcessBackend()
    limits = Limits(
        requests_per_minute=rl.requests_per_minute,
        generations_per_minute=rl.generations_per_minute,
        tokens_per_minute=rl.tokens_per_minute,
        concurrent_streams=rl.concurrent_streams,
        burst_seconds=rl.burst_seconds,
        stream_slot_ttl_s=settings.max_deadline_s + 60,
    )
    return RateLimiter(backend, limits, fail_open=rl.fail_open)


@contextlib.asynccontextmanager
async def wire(
    host: ServiceHost, settings: GatewaySettings, auth: AuthGuard
) -> AsyncIterator[Gateway]:
    """Open the store, start the registry watch and register both servicers."""
    store = await open_store(settings.resolved_store_url)
    keys = ApiKeyManager(store, cache_ttl_s=settings.key_cache_ttl_s)
    limiter = rate_limiter(settings)
    audit = AuditLog(store, settings.audit)
    auth.bind(Authenticator(keys, jwt_verifier(settings)), audit, limiter)
    tls = settings.client_tls if settings.client_tls.enabled else None
    # A restarted registry is found within seconds, not after gRPC's reconnect backoff.
    registry_channel = create_channel(
        settings.registry_address, tls=tls, max_reconnect_backoff_s=2.0
    )
    memory_channel = create_channel(settings.memory_address, tls=tls)
    pool = ChannelPool(tls=tls)
    cache = RegistryCache()
    chat_inflight = TurnsInFlight()

    async def on_change(current: RegistryCache) -> None:
        ready = current.has_snapshot and current.routable()
        if ready != host.health.ready:
            await host.health.set_ready(ready)

    watcher = RegistryWatcher(registry_channel, cache, on_change=on_change)
    routing = settings.routing
    balancer = Balancer(
        cache,
        breaker_threshold=routing.breaker_threshold,
        breaker_cooldown_s=routing.breaker_cooldown_s,
        affinity=routing.session_affinity,
    )
    router = Router(
        balancer,
        pool,
        max_attempts=routing.max_attempts,
        retry_budget=RetryBudget(
            ratio=routing.retry_budget_ratio, reserve=routing.retry_budget_reserve
        ),
    )
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
        GatewayServicer(
            router=router,
            memory=memory_pb2_grpc.MemoryServiceStub(memory_channel),
            limiter=limiter,
            cache=cache,
            chat_budget=ChatBudget(
                context=Share(settings.chat.context_share, settings.chat.context_cap_s),
                append=Share(settings.chat.append_share, settings.chat.append_cap_s),
            ),
            chat_inflight=chat_inflight,
            chat_prompt=ChatPrompt(
                layout=settings.chat.memory_layout, min_score=settings.chat.recall_min_score
            ),
        ),
        host.server,
    )
    gateway_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(
            cache=cache,
            registry=registry_pb2_grpc.RegistryServiceStub(registry_channel),
            router=router,
            keys=keys,
            audit=audit,
        ),
        host.server,
    )
    supervisor = Supervisor(health=host.health)
    watcher.start(supervisor)
    audit.start(supervisor)
    try:
        yield Gateway(
            cache=cache,
            watcher=watcher,
            balancer=balancer,
            router=router,
            keys=keys,
            limiter=limiter,
            audit=audit,
            chat_inflight=chat_inflight,
        )
    finally:
        await watcher.stop()
        auth.unbind()
        await audit.close()  # writes every queued audit event
        await pool.close()
        await registry_channel.close(None)
        await memory_channel.close(None)
        await limiter.close()
        await store.close()
