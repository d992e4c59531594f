"""The registrar: keeps one inference worker's registry entry true.

Waits for the worker to be healthy, registers it, then on every tick (a third
of the lease TTL) probes it and heartbeats the result: READY with its load,
DRAINING while the worker drains after SIGTERM (``Stats.draining``), or UNHEALTHY
with the failed probe as reason. A worker that hangs fails its probe
within the probe deadline, so it leaves READY well within one TTL. On shutdown
it heartbeats DRAINING, waits for the worker's in-flight work (bounded), and
deregisters.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh.kernel.upstream import unary
from llmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from llmesh_registry.probe import ProbeResult, WorkerProbe

log = get_logger(__name__)

READY = common_pb2.WORKER_STATE_READY
UNHEALTHY = common_pb2.WORKER_STATE_UNHEALTHY
DRAINING = common_pb2.WORKER_STATE_DRAINING
KEEP = common_pb2.WORKER_STATE_UNSPECIFIED  # a heartbeat that leaves the state as it is
ADMIN_DRAIN_REASON = "drained by an admin (kept over a registry restart)"


@dataclass(frozen=True)
class WorkerIdentity:
    """How the worker appears in the registry."""

    worker_id: str
    address: str
    labels: dict[str, str]


class Registrar:
    """Registers and heartbeats one worker; call :meth:`run`, then :meth:`drain`."""

    def __init__(
        self,
        identity: WorkerIdentity,
        probe: WorkerProbe,
        registry: registry_pb2_grpc.RegistryServiceAsyncStub,
        *,
        registry_timeout_s: float = 2.0,
        heartbeat_interval_s: float = 0.0,
        wait_interval_s: float = 0.5,
    ) -> None:
        self._identity = identity
        self._probe = probe
        self._probe_timeout_s = probe.timeout_s
        self._registry = registry
        self._registry_timeout_s = registry_timeout_s
        self._fixed_interval_s = heartbeat_interval_s
        self._wait_interval_s = wait_interval_s
        self._lease_id = ""
        self._ttl_ms = 0
        self._state: int = common_pb2.WORKER_STATE_UNSPECIFIED
        # An admin drained the worker (heartbeat replies say DRAINING): carried over a
        # registry restart, whose fresh state no longer knows it (issue 19).
        self.admin_drained = False
        self.registered = asyncio.Event()

    @property
    def interval_s(self) -> float:
        """Heartbeat period: fixed if configured, else a third of the lease TTL."""
        if self._fixed_interval_s:
            return self._fixed_interval_s
        return max(0.05, self._ttl_ms / 3000) if self._ttl_ms else self._wait_interval_s

    @property
    def state(self) -> int:
        return self._state

    async def wait_for_worker(self) -> ProbeResult:
        """Probe until the worker is healthy (logging why not, once per reason)."""
        last_reason = None
        while True:
            result = await self._probe.probe()
            if result.healthy:
                return result
            if result.reason != last_reason:
                log.info("waiting for worker %s: %s", self._identity.address, result.reason)
                last_reason = result.reason
            await asyncio.sleep(self._wait_interval_s)

    async def register(self, result: ProbeResult, *, state: int | None = None) -> None:
        """Register the worker: ``state`` if given (DRAINING while it drains), else the
        admin's DRAINING if one stands, else READY or UNHEALTHY from ``result``."""
        stats = result.stats
        if state is not None:
            chosen, reason = state, result.reason or "shutting down"
        elif self.admin_drained:
            chosen, reason = DRAINING, ADMIN_DRAIN_REASON
        else:
            chosen, reason = (READY if result.healthy else UNHEALTHY), result.reason
        worker = common_pb2.WorkerInfo(
            worker_id=self._identity.worker_id,
            address=self._identity.address,
            labels=common_pb2.Labels(entries=self._identity.labels),
            models_loaded=result.models_loaded,
            models_available=list(stats.models_available) if stats else [],
            capacity=stats.max_batch_size if stats else 0,
            state=chosen,  # type: ignore[arg-type]
            state_reason=reason if chosen != READY else "",
            load=result.load,
            models=await self._probe.models(),
        )
        reply = await unary(
            self._registry.Register,
            registry_pb2.RegisterRequest(worker=worker),
            what="registering the worker",
            timeout_s=self._registry_timeout_s,
        )
        self._lease_id, self._ttl_ms = reply.lease_id, reply.ttl.ToMilliseconds()
        self._state = worker.state
        # A probe must fail well inside one tick, so a hung worker leaves READY
        # within one TTL: tick (TTL/3) + probe deadline + heartbeat.
        self._probe.timeout_s = min(self._probe_timeout_s, self.interval_s / 2)
        self.registered.set()
        log.info(
            "registered worker %s at %s (lease ttl %d ms)",
            self._identity.worker_id,
            self._identity.address,
            self._ttl_ms,
            extra={"worker_id": self._identity.worker_id},
        )

    async def heartbeat(self, result: ProbeResult, *, state: int | None = None) -> None:
        """Renew the lease with ``result``; re-register if the registry forgot us."""
        wanted = state if state is not None else (READY if result.healthy else UNHEALTHY)
        if state is None and self.admin_drained:
            wanted = KEEP  # the admin's DRAINING stands until an admin sets READY
        request = registry_pb2.HeartbeatRequest(
            worker_id=self._identity.worker_id,
            lease_id=self._lease_id,
            load=result.load,
            state=wanted,  # type: ignore[arg-type]
            state_reason="" if wanted in (READY, KEEP) else (result.reason or "shutting down"),
            models_loaded=result.models_loaded,
        )
        try:
            reply = await unary(
                self._registry.Heartbeat,
                request,
                what="heartbeat",
                timeout_s=self._registry_timeout_s,
            )
        except LlmeshError as exc:
            if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                log.warning("registry lost our lease (%s): registering again", exc.code.name)
                # A drain of our own (SIGTERM) re-registers DRAINING, never READY.
                await self.register(result, state=state)
                return
            raise
        self._ttl_ms = reply.ttl.ToMilliseconds()
        if reply.state != self._state:
            log.info(
                "worker %s is %s%s",
                self._identity.worker_id,
                common_pb2.WorkerState.Name(reply.state),
                f" ({request.state_reason})" if request.state_reason else "",
            )
        self._state = reply.state
        if state is None:  # not our own shutdown drain: DRAINING is an admin's
            self.admin_drained = reply.state == DRAINING

    async def run(self) -> None:
        """Wait for the worker, register, then heartbeat forever (cancel to stop).

        Runs supervised: restarted after a crash, it goes straight back to heartbeating.
        """
        if not self.registered.is_set():
            first = await self.wait_for_worker()
        while not self.registered.is_set():
            try:
                await self.register(first)
            except LlmeshError as exc:
                log.warning("registry unreachable (%s); retrying", exc.code.name)
                await asyncio.sleep(self._wait_interval_s)
                first = await self._probe.probe()
        next_tick = time.monotonic() + self.interval_s
        while True:
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick = max(next_tick + self.interval_s, time.monotonic())
            result = await self._probe.probe()
            try:
                # A worker that got SIGTERM says so (Stats.draining): DRAINING, not
                # UNHEALTHY, while it finishes its in-flight work.
                await self.heartbeat(result, state=DRAINING if result.draining else None)
            except LlmeshError as exc:
                log.warning("heartbeat failed (%s); the lease runs on", exc.code.name)

    async def drain(self, *, timeout_s: float) -> None:
        """DRAINING, wait (bounded) for in-flight work to finish, then deregister.

        Worker and registrar get SIGTERM together in a pod: the draining worker is
        not ready but still answers, so the registration stays DRAINING (the lease
        renewed every tick) until the worker is idle, or gone (it exits once drained),
        or ``timeout_s`` passes. A worker that answers nothing useful (not ready, probe
        timing out) is waited for too: only a closed port counts as finished.
        """
        if not self.registered.is_set():
            return
        deadline = time.monotonic() + timeout_s
        result = await self._probe.probe()
        await self._mark_draining(result)
        next_beat = time.monotonic() + self.interval_s
        while _busy(result) and time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            result = await self._probe.probe()
            if time.monotonic() >= next_beat and _busy(result):
                next_beat = time.monotonic() + self.interval_s
                await self._mark_draining(result)
        log.info(
            "worker %s drained (%s)",
            self._identity.worker_id,
            "timed out" if _busy(result) else ("gone" if result.gone else "idle"),
        )
        try:
            await unary(
                self._registry.Deregister,
                registry_pb2.DeregisterRequest(
                    worker_id=self._identity.worker_id, lease_id=self._lease_id
                ),
                what="deregistering the worker",
                timeout_s=self._registry_timeout_s,
            )
            log.info("deregistered worker %s", self._identity.worker_id)
        except LlmeshError as exc:
            # The lease will lapse on its own; nothing else to do.
            log.warning("deregister failed (%s); the lease will lapse", exc.code.name)

    async def _mark_draining(self, result: ProbeResult) -> None:
        try:
            await self.heartbeat(result, state=DRAINING)
        except LlmeshError as exc:
            log.warning("could not mark DRAINING (%s)", exc.code.name)


def _busy(result: ProbeResult) -> bool:
    """Whether the worker may still have in-flight work (see :meth:`Registrar.drain`)."""
    if result.stats is not None:
        return not result.idle
    return not result.gone
