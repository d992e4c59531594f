"""Generation and embeddings on workers, with failover before the first token.

A failed attempt (worker fault or worker full) is retried on another worker while
nothing has reached the client, the caller's deadline leaves time and the retry
budget allows. After the first token a failure ends the stream with UNAVAILABLE,
reason STREAM_INTERRUPTED, or with DEADLINE_EXCEEDED when the deadline passed, both
with ErrorInfo metadata ``tokens_delivered``. Closing the returned stream (client
cancel) cancels the upstream call at once. Calls go through the kernel's upstream
client (deadline, trace context, request id, error table).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from llmesh.kernel.context import remaining_s
from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh.kernel.telemetry import meter
from llmesh.kernel.upstream import OutboundCall, from_broken_stream, from_peer
from llmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from llmesh_gateway.balancer import Balancer, RetryBudget
from llmesh_gateway.upstream import RETRYABLE, ChannelPool, breaker_verdict

log = get_logger(__name__)

_GENERATE = "llmesh.v1.InferenceService/Generate"
_EMBED = "llmesh.v1.InferenceService/Embed"


@dataclass(frozen=True)
class Chunk:
    """One upstream chunk with the worker and model that produced it."""

    worker_id: str
    model: str
    response: inference_pb2.InferenceServiceGenerateResponse


@dataclass
class Generation:
    """A whole generation (for unary Generate)."""

    worker_id: str
    model: str
    text: str
    token_ids: list[int]
    finish_reason: int
    usage: common_pb2.Usage


class Router:
    """Sends work to workers chosen by the balancer, failing over between them."""

    def __init__(
        self,
        balancer: Balancer,
        pool: ChannelPool,
        *,
        max_attempts: int = 3,
        retry_budget: RetryBudget | None = None,
        min_retry_time_s: float = 0.05,
    ) -> None:
        self.balancer = balancer
        self.pool = pool
        self._max_attempts = max_attempts
        self._budget = retry_budget or RetryBudget()
        self._min_retry_time_s = min_retry_time_s
        m = meter("llmesh.gateway")
        self._failovers = m.create_counter(
            "gateway.failovers", description="Attempts retried on another worker"
        )
        self._interrupted = m.create_counter(
            "gateway.streams_interrupted", description="Streams that failed after a token"
        )
        self._ttft = m.create_histogram(
            "gateway.time_to_first_token", unit="ms", description="Gateway-side TTFT"
        )

    def _stub(self, worker: common_pb2.WorkerInfo) -> inference_pb2_grpc.InferenceServiceAsyncStub:
        return inference_pb2_grpc.InferenceServiceStub(self.pool.get(worker.address))

    def _may_retry(self, attempt: int, code: grpc.StatusCode) -> bool:
        if code not in RETRYABLE or attempt >= self._max_attempts:
            return False
        left = remaining_s()
        if left is not None and left < self._min_retry_time_s:
            return False
        return self._budget.withdraw()

    def _choose(
        self, model: str, tried: set[str], session_id: str, last: LlmeshError | None
    ) -> common_pb2.WorkerInfo:
        try:
            worker = self.balancer.choose(model, exclude=tried, session_id=session_id)
        except LlmeshError:
            if last is not None:
                raise last from None
            raise
        tried.add(worker.worker_id)
        return worker

    def _settle(self, worker_id: str, verdict: bool | None) -> None:
        self.balancer.finished(worker_id)
        breaker = self.balancer.breaker(worker_id)
        if verdict is True:
            breaker.success()
        elif verdict is False:
            breaker.failure()
        else:
            breaker.release()

    def _failed(self, exc: grpc.aio.AioRpcError, worker: common_pb2.WorkerInfo) -> LlmeshError:
        code = exc.code()
        worker_id = worker.worker_id
        if code == grpc.StatusCode.UNAVAILABLE:
            self.pool.discard(worker.address)
        log.info("worker %s answered %s", worker_id, code.name, extra={"worker_id": worker_id})
        return from_peer(exc, what="generation", service="llmesh.v1.InferenceService")

    async def stream(
        self, request: inference_pb2.InferenceServiceGenerateRequest, *, session_id: str = ""
    ) -> AsyncIterator[Chunk]:
        """Stream a generation's ``delta`` and ``done`` events; the worker's ``start``
        event and empty deltas before the first token are folded in (its model is on
        every :class:`Chunk`), so failover stays possible until text flows."""
        self._budget.deposit()
        tried: set[str] = set()
        last: LlmeshError | None = None
        attempt = 0
        started = time.perf_counter()
        while True:
            attempt += 1
            worker = self._choose(request.input.model, tried, session_id, last)
            outbound = OutboundCall(_GENERATE)
            call = self._stub(worker).Generate(
                request, timeout=outbound.timeout, metadata=outbound.metadata
            )
            self.balancer.started(worker.worker_id)
            verdict: bool | None = None
            status = grpc.StatusCode.OK
            delivered = 0
            sent = False
            model = ""
            try:
                async for response in call:  # type: ignore[attr-defined]
                    event = response.WhichOneof("event")
                    if event == "start":
                        model = response.start.model or model
                        continue
                    if not sent:
                        delta = response.delta
                        if event == "delta" and not (delta.token_ids or delta.text):
                            continue
                        self._ttft.record((time.perf_counter() - started) * 1000)
                    sent = True
                    delivered += len(response.delta.token_ids)
                    yield Chunk(worker.worker_id, model, response)
                verdict = True
                return
            except grpc.aio.AioRpcError as exc:
                code = status = exc.code()
                verdict = breaker_verdict(exc)
                if sent:
                    if code != grpc.StatusCode.DEADLINE_EXCEEDED:
                        self._interrupted.add(1)
                    raise from_broken_stream(exc, what="generation", delivered=delivered) from None
                last = self._failed(exc, worker)
                if not self._may_retry(attempt, code):
                    raise last from None
                self._failovers.add(1)
                log.warning(
                    "worker %s failed before the first token (%s); failing over",
                    worker.worker_id,
                    code.name,
                )
            except BaseException:
                status = grpc.StatusCode.CANCELLED
                raise
            finally:
                call.cancel()  # type: ignore[no-untyped-call]
                outbound.finish(status)
                self._settle(worker.worker_id, verdict)

    async def generate(
        self, request: inference_pb2.InferenceServiceGenerateRequest, *, session_id: str = ""
    ) -> Generation:
        """A whole generation. Nothing reaches the client before the end, so any failed
        attempt may be retried elsewhere."""
        self._budget.deposit()
        tried: set[str] = set()
        last: LlmeshError | None = None
        attempt = 0
        while True:
            attempt += 1
            worker = self._choose(request.input.model, tried, session_id, last)
            outbound = OutboundCall(_GENERATE)
            call = self._stub(worker).Generate(
                request, timeout=outbound.timeout, metadata=outbound.metadata
            )
            self.balancer.started(worker.worker_id)
            verdict: bool | None = None
            status = grpc.StatusCode.OK
            result = Generation(worker.worker_id, "", "", [], 0, common_pb2.Usage())
            texts: list[str] = []
            try:
                async for response in call:  # type: ignore[attr-defined]
                    event = response.WhichOneof("event")
                    if event == "start":
                        result.model = response.start.model
                    elif event == "delta":
                        texts.append(response.delta.text)
                        result.token_ids.extend(response.delta.token_ids)
                    elif event == "done":
                        result.finish_reason = response.done.finish_reason
                        result.usage.CopyFrom(response.done.usage)
                verdict = True
                result.text = "".join(texts)
                return result
            except grpc.aio.AioRpcError as exc:
                code = status = exc.code()
                verdict = breaker_verdict(exc)
                last = self._failed(exc, worker)
                if not self._may_retry(attempt, code):
                    raise last from None
                self._failovers.add(1)
            except BaseException:
                status = grpc.StatusCode.CANCELLED
                raise
            finally:
                call.cancel()  # type: ignore[no-untyped-call]
                outbound.finish(status)
                self._settle(worker.worker_id, verdict)

    async def embed(
        self, request: inference_pb2.InferenceServiceEmbedRequest
    ) -> tuple[str, inference_pb2.InferenceServiceEmbedResponse]:
        """Embeddings from any READY worker, failing over like generation."""
        self._budget.deposit()
        tried: set[str] = set()
        last: LlmeshError | None = None
        attempt = 0
        while True:
            attempt += 1
            worker = self._choose("", tried, "", last)
            self.balancer.started(worker.worker_id)
            verdict: bool | None = None
            outbound = OutboundCall(_EMBED)
            status = grpc.StatusCode.OK
            try:
                response = await self._stub(worker).Embed(
                    request, timeout=outbound.timeout, metadata=outbound.metadata
                )
                verdict = True
                return worker.worker_id, response
            except grpc.aio.AioRpcError as exc:
                code = status = exc.code()
                verdict = breaker_verdict(exc)
                last = self._failed(exc, worker)
                if not self._may_retry(attempt, code):
                    raise last from None
                self._failovers.add(1)
            except BaseException:
                status = grpc.StatusCode.CANCELLED
                raise
            finally:
                outbound.finish(status)
                self._settle(worker.worker_id, verdict)
