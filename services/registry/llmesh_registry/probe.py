"""Probes of the inference worker a registrar sits beside: health, then ``Stats``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.context import deadline_scope
from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.upstream import unary
from llmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc

DRAINING_REASON = "worker is draining (shutting down)"


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found: healthy with figures, or why not."""

    healthy: bool
    reason: str = ""
    stats: inference_pb2.StatsResponse | None = None
    draining: bool = False
    """The worker is shutting down (``Stats.draining``): alive, not ready, finishing."""
    gone: bool = False
    """The worker does not answer at all (UNAVAILABLE: exited, port closed)."""

    @property
    def load(self) -> common_pb2.WorkerLoad | None:
        if self.stats is None:
            return None
        return common_pb2.WorkerLoad(
            active_requests=self.stats.active_requests,
            queued_requests=self.stats.queued_requests,
            free_slots=self.stats.free_slots,
            tokens_per_second=self.stats.tokens_per_second,
        )

    @property
    def models_loaded(self) -> list[str]:
        if self.stats is None:
            return []
        return [m.name for m in self.stats.loaded_models]

    @property
    def idle(self) -> bool:
        return self.stats is not None and (
            self.stats.active_requests + self.stats.queued_requests == 0
        )


class WorkerProbe:
    """Asks the worker's ``liveness`` and ``readiness`` health, then its ``Stats``.

    A worker whose liveness is NOT_SERVING (a background loop that cannot recover, a
    dead or stalled MLX thread) is unhealthy even while it still says it is ready.
    A worker that does not report liveness at all (``NOT_FOUND``) is judged by
    readiness alone.
    """

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        self._channel = channel
        self._health = health_pb2_grpc.HealthStub(channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(channel)
        self.timeout_s = timeout_s

    async def probe(self) -> ProbeResult:
        """All calls share one deadline of ``timeout_s`` (the two health checks run at once)."""
        with deadline_scope(self.timeout_s, name="probe"):
            live, ready = await asyncio.gather(self._check("liveness"), self._check("readiness"))
            for service, reply in (("liveness", live), ("readiness", ready)):
                if isinstance(reply, LlmeshError):
                    if service == "liveness" and reply.code == grpc.StatusCode.NOT_FOUND:
                        continue  # the worker does not report liveness
                    gone = reply.code == grpc.StatusCode.UNAVAILABLE or self._unreachable()
                    reason = f"{service} check failed: {_describe(reply)}"
                    return ProbeResult(False, reason, gone=gone)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    if service == "readiness":  # alive but not ready: draining?
                        draining = await self._draining_stats()
                        if draining is not None:
                            return ProbeResult(False, DRAINING_REASON, draining, draining=True)
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    return ProbeResult(False, f"worker {service} is {name}")
            try:
                stats = await unary(
                    self._inference.Stats, inference_pb2.StatsRequest(), what="Stats"
                )
            except LlmeshError as exc:
                return ProbeResult(False, f"Stats failed: {_describe(exc)}")
        return ProbeResult(True, "", stats)

    def _unreachable(self) -> bool:
        """The channel cannot connect (the port is closed: the worker exited). The
        channel retries UNAVAILABLE, so a refused connection shows as a timeout."""
        state = self._channel.get_state(try_to_connect=False)
        return bool(state == grpc.ChannelConnectivity.TRANSIENT_FAILURE)

    async def _draining_stats(self) -> inference_pb2.StatsResponse | None:
        """``Stats`` when the worker says it is draining (else None)."""
        try:
            stats = await unary(self._inference.Stats, inference_pb2.StatsRequest(), what="Stats")
        except LlmeshError:
            return None
        return stats if stats.draining else None

    async def models(self) -> list[common_pb2.ModelInfo]:
        """The worker's models with their figures (``ListModels``); empty if it fails."""
        try:
            reply = await unary(
                self._inference.ListModels,
                inference_pb2.InferenceServiceListModelsRequest(),
                what="ListModels",
                timeout_s=self.timeout_s,
            )
        except LlmeshError:
            return []
        return list(reply.models)

    async def _check(self, service: str) -> health_pb2.HealthCheckResponse | LlmeshError:
        try:
            reply: health_pb2.HealthCheckResponse = await unary(
                self._health.Check,
                health_pb2.HealthCheckRequest(service=service),
                what=f"{service} check",
            )
        except LlmeshError as exc:
            return exc
        return reply


def _describe(exc: LlmeshError) -> str:
    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out"
    return exc.code.name
