"""``llmesh.v1.InferenceService``: protobuf in, worker calls, protobuf out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from llmesh.kernel.context import current_request
from llmesh.kernel.errors import NotFound, invalid
from llmesh.kernel.telemetry import tracer
from llmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from llmesh_inference.models import ModelInfoData, validate_name
from llmesh_inference.sampling import parse_sampling
from llmesh_inference.scheduler import (
    CONTEXT_FULL,
    EOS,
    LENGTH,
    STOP,
    Chunk,
    Failed,
    Finished,
    GenerationRequest,
)
from llmesh_inference.worker import EMBEDDING_MODEL, InferenceWorker

Context = grpc.aio.ServicerContext[Any, Any]

_FINISH = {
    EOS: common_pb2.FINISH_REASON_EOS,
    LENGTH: common_pb2.FINISH_REASON_LENGTH,
    STOP: common_pb2.FINISH_REASON_STOP_SEQUENCE,
    CONTEXT_FULL: common_pb2.FINISH_REASON_CONTEXT_FULL,
}
_ROLES = {
    common_pb2.CHAT_ROLE_SYSTEM: "system",
    common_pb2.CHAT_ROLE_USER: "user",
    common_pb2.CHAT_ROLE_ASSISTANT: "assistant",
}


def _model_info(info: ModelInfoData, engine: str) -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(
        engine=engine,
        name=info.name,
        loaded=info.loaded,
        context_length=info.context_length,
        parameters=info.parameters,
        dtype=info.dtype,
        memory_bytes=info.memory_bytes,
    )


def _epoch_ns(monotonic: float) -> int:
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Transport for :class:`InferenceWorker`."""

    def __init__(self, worker: InferenceWorker) -> None:
        self.worker = worker
        self.settings = worker.settings
        self._tracer = tracer("llmesh.inference")

    # ----- Generate --------------------------------------------------------------

    def _resolve_model(self, name: str) -> str:
        name = name or (self.worker.default_model or "")
        if not name:
            raise invalid("model", "no model named and the worker has no default model")
        validate_name(name)
        if self.worker.store.get(name) is None and not self.worker.store.exists(name):
            raise NotFound(
                f"no model {name!r} on this worker",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name},
            )
        return name

    def _request(self, request: inference_pb2.InferenceServiceGenerateRequest) -> GenerationRequest:
        # The kernel has checked the contract: exactly one of a non-empty prompt or
        # 1..256 messages with defined roles, sizes, sampling ranges.
        generation = request.input
        content = generation.WhichOneof("content")
        messages = None
        if content == "messages":
            chat = generation.messages.messages
            messages = [{"role": _ROLES[m.role], "content": m.content} for m in chat]
        options = parse_sampling(
            generation.sampling if generation.HasField("sampling") else None,
            default_temperature=self.settings.default_temperature,
            default_max_tokens=self.settings.default_max_tokens,
        )
        kwargs: dict[str, Any] = {}
        ctx = current_request()
        if ctx is not None and ctx.request_id:
            kwargs["request_id"] = ctx.request_id
        return GenerationRequest(
            model=self._resolve_model(generation.model),
            options=options,
            prompt=generation.prompt if content == "prompt" else None,
            messages=messages,
            deadline=ctx.deadline if ctx is not None else None,  # the caller's, as is
            **kwargs,
        )

    async def Generate(
        self, request: inference_pb2.InferenceServiceGenerateRequest, context: Context
    ) -> AsyncIterator[inference_pb2.InferenceServiceGenerateResponse]:
        self.worker.refuse_if_draining()
        req = self._request(request)
        parent = trace.get_current_span()
        handle = self.worker.engine.submit(req)
        self.worker.track(handle)
        finished: Finished | None = None
        started = False
        try:
            while finished is None:
                events = [await handle.next_event(), *handle.drain()]
                text: list[str] = []
                ids: list[int] = []
                for event in events:
                    if isinstance(event, Chunk):
                        text.append(event.text)
                        ids.extend(event.token_ids)
                    elif isinstance(event, Finished):
                        text.append(event.text)
                        ids.extend(event.token_ids)
                        finished = event
                    elif isinstance(event, Failed):
                        raise event.error
                if not started:  # after the first event, so an admission error comes first
                    started = True
                    yield inference_pb2.InferenceServiceGenerateResponse(
                        start=inference_pb2.InferenceServiceGenerateStart(model=req.model)
                    )
                joined = "".join(text)
                if joined or ids:
                    yield inference_pb2.InferenceServiceGenerateResponse(
                        delta=common_pb2.GenerationDelta(text=joined, token_ids=ids)
                    )
                if finished is not None:
                    yield inference_pb2.InferenceServiceGenerateResponse(
                        done=common_pb2.GenerationDone(
                            finish_reason=_FINISH[finished.reason],
                            usage=common_pb2.Usage(
                                prompt_tokens=finished.prompt_tokens,
                                completion_tokens=finished.completion_tokens,
                                time_to_first_token_ms=finished.ttft_ms,
                                total_time_ms=finished.total_ms,
                                queue_time_ms=finished.queue_ms,
                            ),
                        )
                    )
        finally:
            self.worker.untrack(handle)
            if finished is None:
                handle.cancel()
            self._spans(parent, handle.timestamps, req, finished)

    def _spans(
        self,
        parent: trace.Span,
        stamps: dict[str, float],
        req: GenerationRequest,
        finished: Finished | None,
    ) -> None:
        """Queue wait, prefill and decode spans from the MLX thread's timestamps."""
        ctx = trace.set_span_in_context(parent)
        end = stamps.get("finished", time.monotonic())
        phases = [
            ("inference.queue_wait", stamps.get("admitted"), stamps.get("inserted", end)),
            ("inference.prefill", stamps.get("inserted"), stamps.get("first_token", end)),
            ("inference.decode", stamps.get("first_token"), end),
        ]
        for name, start, stop in phases:
            if start is None:
                continue
            span = self._tracer.start_span(
                name,
                context=ctx,
                start_time=_epoch_ns(start),
                attributes={
                    "llmesh.model": req.model,
                    "llmesh.request_id": req.request_id,
                    "llmesh.finish_reason": finished.reason if finished else "cancelled",
                },
            )
            span.end(end_time=_epoch_ns(stop))

    # ----- Embed -----------------------------------------------------------------

    async def Embed(
        self, request: inference_pb2.InferenceServiceEmbedRequest, context: Context
    ) -> inference_pb2.InferenceServiceEmbedResponse:
        if not self.settings.embeddings:
            raise NotFound("this worker serves no embeddings", reason="MODEL_NOT_FOUND")
        texts = list(request.texts)
        limit = self.settings.embed_max_texts
        if not 1 <= len(texts) <= limit:
            raise invalid("texts", f"give 1..{limit} texts")
        if request.model and request.model != EMBEDDING_MODEL:
            raise NotFound(
                f"no embedding model {request.model!r} (this worker has {EMBEDDING_MODEL})",
                reason="MODEL_NOT_FOUND",
                metadata={"model": request.model},
            )
        worker = self.worker

        def run() -> Any:
            return worker.embedder().embed(texts)

        with self._tracer.start_as_current_span("inference.embed") as span:
            span.set_attribute("llmesh.texts", len(texts))
            result = await worker.engine.call(run)
        response = inference_pb2.InferenceServiceEmbedResponse(
            dimensions=int(result.vectors.shape[1]),
            model=EMBEDDING_MODEL,
            prompt_tokens=int(result.token_count),
        )
        for row in result.vectors:
            response.embeddings.add().values.extend(row.tolist())
        return response

    # ----- models ----------------------------------------------------------------

    async def LoadModel(
        self, request: inference_pb2.InferenceServiceLoadModelRequest, context: Context
    ) -> inference_pb2.InferenceServiceLoadModelResponse:
        validate_name(request.model)
        store, worker = self.worker.store, self.worker

        def load() -> Any:
            busy = {m.name for m in store.loaded() if m.requests}
            return store.load(request.model, protect=busy | worker.pinned())

        model, evicted, ms = await worker.engine.call(load)
        await worker.refresh_health()
        return inference_pb2.InferenceServiceLoadModelResponse(
            model=_model_info(model.info(), worker.engine_name), evicted=evicted, load_time_ms=ms
        )

    async def UnloadModel(
        self, request: inference_pb2.InferenceServiceUnloadModelRequest, context: Context
    ) -> inference_pb2.InferenceServiceUnloadModelResponse:
        validate_name(request.model)
        released = await self.worker.unload(request.model, force=request.force)
        return inference_pb2.InferenceServiceUnloadModelResponse(released_bytes=released)

    def _models(self) -> list[common_pb2.ModelInfo]:
        store = self.worker.store
        names = dict.fromkeys([*store.available(), *store.loaded_names()])
        out = [_model_info(store.describe(n), self.worker.engine_name) for n in names]
        if self.settings.embeddings:
            out.append(
                common_pb2.ModelInfo(
                    name=EMBEDDING_MODEL,
                    loaded=self.worker.embedder_loaded,
                    context_length=256,
                    parameters=22_713_216,
                    dtype="float32",
                    embedding=True,
                    engine="mlx",
                )
            )
        return out

    async def ListModels(
        self, request: inference_pb2.InferenceServiceListModelsRequest, context: Context
    ) -> inference_pb2.InferenceServiceListModelsResponse:
        return inference_pb2.InferenceServiceListModelsResponse(
            models=self._models(),
            default_model=self.worker.default_model or "",
            engine=self.worker.engine_name,
            blas=self.worker.engine_blas,
            device=self.worker.device,
        )

    async def Stats(
        self, request: inference_pb2.StatsRequest, context: Context
    ) -> inference_pb2.StatsResponse:
        stats = self.worker.engine.stats()
        store = self.worker.store
        return inference_pb2.StatsResponse(
            loaded_models=[_model_info(i, self.worker.engine_name) for i in store.infos()],
            active_requests=stats.active_requests,
            queued_requests=stats.queued_requests,
            batch_size=stats.batch_size if stats.active_requests else 0,
            max_batch_size=stats.max_batch_size,
            free_slots=max(0, stats.max_batch_size - stats.active_requests),
            queue_capacity=stats.queue_capacity,
            tokens_per_second=stats.tokens_per_second,
            tokens_generated_total=stats.tokens_generated_total,
            decode_steps_total=stats.decode_steps_total,
            requests_completed_total=stats.requests_completed_total,
            requests_cancelled_total=stats.requests_cancelled_total,
            requests=[
                inference_pb2.ActiveRequest(
                    request_id=rid, model=model, completion_tokens=tokens, queued=queued
                )
                for rid, model, tokens, queued in stats.requests
            ],
            blas=self.worker.engine_blas,
            engine=self.worker.engine_name,
            device=self.worker.device,
            uptime_seconds=time.monotonic() - self.worker.started_at,
            default_model=self.worker.default_model or "",
            models_available=store.available(),
            draining=self.worker.draining,
        )
