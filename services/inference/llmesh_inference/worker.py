"""The inference worker's resources: model store, MLX engine, embedder, health.

:class:`InferenceWorker` owns them for the life of the server; the servicer
(transport) only translates between protobuf and these objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING

from llmesh.kernel.errors import FailedPrecondition, LlmeshError, NotFound, Unavailable
from llmesh.kernel.health import HealthReporter
from llmesh.kernel.logging import get_logger
from llmesh.kernel.tasks import Supervisor
from llmesh_inference.blas import detect_blas
from llmesh_inference.llamacpp.binary import find_llama_server
from llmesh_inference.llamacpp.child import ChildOptions, LlamaServerChild
from llmesh_inference.llamacpp.engine import LlamaCppEngine
from llmesh_inference.llamacpp.select import LLAMA_CPP, MLX, EngineChoice, choose_engine
from llmesh_inference.llamacpp.store import GgufStore, find_gguf
from llmesh_inference.models import ModelStore
from llmesh_inference.scheduler import Engine, RequestHandle
from llmesh_inference.settings import InferenceSettings

if TYPE_CHECKING:
    from llmesh_inference.embeddings import MiniLMEmbedder

log = get_logger(__name__)

EMBEDDING_MODEL = "all-minilm-l6-v2"
STALL = "mlx-stall"  # the part of liveness a stalled (alive but stuck) MLX thread holds down


class InferenceWorker:
    """Model store + MLX engine + embedder + health reporting of one process."""

    def __init__(self, settings: InferenceSettings, health: HealthReporter | None = None) -> None:
        import mlx.core as mx

        self.settings = settings
        self.health = health
        if settings.device == "cpu":
            mx.set_default_device(mx.cpu)
        elif settings.device == "gpu":
            mx.set_default_device(mx.gpu)
        self.device = "gpu" if mx.default_device().type == mx.gpu else "cpu"
        self.blas = detect_blas(self.device)
        self.models_dir = settings.resolved_models_dir
        budget = settings.memory_budget_mb * 2**20 if settings.memory_budget_mb else None
        self.store = ModelStore(
            self.models_dir,
            max_loaded=settings.max_loaded_models,
            memory_budget_bytes=budget,
            dtype=settings.dtype,
            device=self.device,
            generator_kwargs={
                "completion_batch_size": settings.max_batch_size,
                "prefill_batch_size": settings.prefill_batch_size,
                "prefill_step_size": settings.prefill_step_size,
            },
        )
        self.default_model = settings.default_model or self._only_model()
        self.engine_choice = self._choose_engine()
        self.child: LlamaServerChild | None = None
        mlx_engine = Engine(
            self.store,
            max_batch_size=settings.max_batch_size,
            queue_capacity=settings.queue_capacity,
            idle_unload_s=settings.idle_unload_s,
            pinned=self.pinned,
            health=health,
            decode_delay_s=settings.decode_delay_ms / 1000,
        )
        self.engine: Engine | LlamaCppEngine = mlx_engine
        if self.engine_choice.engine == LLAMA_CPP:
            self.engine = self._llama_cpp_engine(mlx_engine)
        self._embedder: MiniLMEmbedder | None = None
        self.supervisor = Supervisor(health=health)
        self.started_at = time.monotonic()
        self.draining = False
        """Set by :meth:`drain` (SIGTERM): no new generations; readiness NOT_SERVING."""
        self.inflight: set[RequestHandle] = set()
        """The generations the servicer is streaming now (:meth:`track`)."""
        self._idle = asyncio.Event()
        self._idle.set()

    def _choose_engine(self) -> EngineChoice:
        settings = self.settings
        if settings.engine == "mlx":
            return EngineChoice(MLX, "engine = mlx")
        gguf = settings.gguf
        if gguf is not None and not gguf.is_file():
            gguf = None
        if gguf is not None and self.default_model is None:
            self.default_model = gguf.name.removesuffix(".gguf")
        if gguf is None and self.default_model is not None:
            gguf = find_gguf(self.models_dir / self.default_model)
        return choose_engine(
            settings.engine,
            device=self.device,
            binary=find_llama_server(settings.llama_server),
            gguf=gguf,
            default_model=self.default_model,
        )

    def _llama_cpp_engine(self, commands: Engine) -> LlamaCppEngine:
        """The llama-server child for the default model; MLX keeps the embeddings."""
        import os

        choice, settings = self.engine_choice, self.settings
        assert choice.binary is not None and choice.gguf is not None and self.default_model
        store = GgufStore(
            self.models_dir,
            name=self.default_model,
            gguf=choice.gguf,
            context_length=settings.llamacpp_ctx_size,
        )
        self.store = store
        self.child = LlamaServerChild(
            ChildOptions(
                binary=choice.binary,
                gguf=choice.gguf,
                alias=self.default_model,
                threads=settings.llamacpp_threads or os.cpu_count() or 1,
                parallel=settings.max_batch_size,
                ctx_size=settings.llamacpp_ctx_size,
            ),
            on_ready=self._child_ready,
            start_timeout_s=settings.llamacpp_start_timeout_s,
        )
        return LlamaCppEngine(
            self.child,
            commands,
            model=self.default_model,
            max_batch_size=settings.max_batch_size,
            queue_capacity=settings.queue_capacity,
            context_length=settings.llamacpp_ctx_size,
            cache_prompt=settings.llamacpp_cache_prompt,
        )

    async def _child_ready(self, ready: bool) -> None:
        if isinstance(self.store, GgufStore):
            self.store.set_loaded(ready)
        await self.refresh_health()

    @property
    def engine_name(self) -> str:
        """The generation engine: "mlx" or "llama.cpp"."""
        return self.engine_choice.engine

    @property
    def engine_blas(self) -> str:
        """The generation engine's BLAS: MLX's, or "ggml" (llama.cpp's own CPU kernels)."""
        return "ggml" if self.child is not None else self.blas

    def _only_model(self) -> str | None:
        names = self.store.available()
        return names[0] if len(names) == 1 else None

    def pinned(self) -> set[str]:
        """Models never evicted or idle-unloaded: the default one."""
        return {self.default_model} if self.default_model else set()

    # ----- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self.device == "cpu" and self.blas == "reference":
            log.warning(
                "MLX runs on the REFERENCE BLAS (slow: ~5-7 GFLOP/s, no gain from batching). "
                "Start the worker with `llmesh serve inference` (it preloads OpenBLAS) or set "
                "LD_PRELOAD to an optimized libopenblas.so; see docs/inference.md",
                extra={"blas": self.blas},
            )
        else:
            log.info("MLX device %s, BLAS %s", self.device, self.blas, extra={"blas": self.blas})
        log.info(
            "generation engine %s (%s)",
            self.engine_choice.engine,
            self.engine_choice.reason,
            extra={"engine": self.engine_choice.engine},
        )
        self.engine.start()
        if self.child is not None:
            self.supervisor.spawn("llama-server", self.child.run)
        self.supervisor.spawn("inference-warm-up", self._warm_up)
        self.supervisor.spawn("inference-watchdog", self._watchdog)

    async def stop(self) -> None:
        await self.supervisor.stop()
        await asyncio.to_thread(self.engine.stop)

    def track(self, handle: RequestHandle) -> None:
        """A generation starts streaming (the drain waits for it)."""
        self.inflight.add(handle)
        self._idle.clear()

    def untrack(self, handle: RequestHandle) -> None:
        self.inflight.discard(handle)
        if not self.inflight:
            self._idle.set()

    async def _until_idle(self, deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))

    def refuse_if_draining(self) -> None:
        """New work on a draining worker: UNAVAILABLE / WORKER_DRAINING (fail over)."""
        if self.draining:
            raise Unavailable(
                "this worker is shutting down and takes no new requests; retry on another worker",
                reason="WORKER_DRAINING",
                retry_after_s=0.1,
            )

    async def drain(self, deadline: float) -> None:
        """SIGTERM: refuse new generations, finish the running and queued ones.

        Readiness goes NOT_SERVING (liveness stays SERVING) and ``Stats.draining`` is
        true, so the registrar reports the worker DRAINING while health and ``Stats``
        still answer. Generations still running shortly before ``deadline`` (the end of
        the grace period) end with UNAVAILABLE: ``STREAM_INTERRUPTED`` with metadata
        ``tokens_delivered`` after tokens were sent, ``WORKER_DRAINING`` before.
        """
        self.draining = True
        await self.refresh_health()
        left = deadline - time.monotonic()
        log.info(
            "draining: %d generations in flight, up to %.1fs to finish",
            len(self.inflight),
            max(0.0, left),
            extra={"inflight": len(self.inflight)},
        )
        cut_at = deadline - min(0.5, max(0.0, left) / 4)  # time to send the statuses
        await self._until_idle(cut_at)
        if not self.inflight:
            log.info("drained: no generation in flight")
            return
        log.warning("grace period ends: interrupting %d generations", len(self.inflight))
        for handle in list(self.inflight):
            handle.interrupt(self._cut_error(handle.tokens))
        await self._until_idle(deadline)

    def _cut_error(self, tokens: int) -> LlmeshError:
        grace = self.settings.grace_period_s
        if tokens:
            return Unavailable(
                f"the worker shut down: its grace period ({grace:g}s) ended after "
                f"{tokens} tokens of this generation; retry on another worker "
                "(the retry regenerates from the start)",
                reason="STREAM_INTERRUPTED",
                retry_after_s=0.1,
                metadata={"tokens_delivered": str(tokens)},
            )
        return Unavailable(
            f"the worker shut down before this request started (grace period {grace:g}s); "
            "retry on another worker",
            reason="WORKER_DRAINING",
            retry_after_s=0.1,
        )

    async def _warm_up(self) -> None:
        """Load the default model (readiness waits for it) and any preloads."""
        names = [n for n in [self.default_model, *self.settings.preload_models] if n]
        if self.child is not None:  # the child loads its one model; readiness follows it
            await self.refresh_health()
            return
        if not names:
            log.warning(
                "no default model (set --default-model; %d models in %s); "
                "loading the embedding model only",
                len(self.store.available()),
                self.models_dir,
            )
            if self.settings.embeddings:
                with contextlib.suppress(Exception):
                    await self.engine.call(self.embedder)
        for name in dict.fromkeys(names):
            try:
                await self.engine.call(functools.partial(self._load, name))
            except Exception as exc:
                log.error("cannot load model %s at start: %s", name, exc)
        await self.refresh_health()

    def _load(self, name: str) -> object:
        return self.store.load(name, protect=self.pinned())

    def is_ready(self) -> bool:
        if self.draining:
            return False
        if self.default_model:
            return self.store.get(self.default_model) is not None
        return bool(self.store.loaded_names()) or self._embedder is not None

    def is_live(self) -> bool:
        """False while the MLX thread has work but has made no progress for the stall timeout."""
        stalled = time.monotonic() - self.engine.last_progress > self.settings.stall_timeout_s
        return not (stalled and self.engine.busy)

    async def refresh_health(self) -> None:
        """Readiness from the loaded models; the ``mlx-stall`` part of liveness from progress.

        (A dead MLX thread holds the ``mlx`` part of liveness down by itself.)
        """
        if self.health is None:
            return
        ready, live = self.is_ready(), self.is_live()
        if ready != self.health.ready:
            log.info("readiness %s", "SERVING" if ready else "NOT_SERVING")
            await self.health.set_ready(ready)
        if live != self.health.part_live(STALL):
            log.log(
                20 if live else 40,
                "liveness %s",
                "SERVING: the MLX thread makes progress again"
                if live
                else "NOT_SERVING: the MLX thread has work but makes no progress",
            )
            await self.health.set_live(live, part=STALL)

    async def _watchdog(self) -> None:
        while True:
            await self.refresh_health()
            await asyncio.sleep(min(1.0, self.settings.stall_timeout_s / 4))

    # ----- embeddings (MLX thread) -------------------------------------------------

    def embedder(self) -> MiniLMEmbedder:
        """The embedding model, loaded on first use. Call on the MLX thread."""
        if self._embedder is None:
            from llmesh_inference.embeddings import MiniLMEmbedder

            started = time.perf_counter()
            self._embedder = MiniLMEmbedder.load(
                max_batch_tokens=self.settings.embed_max_batch_tokens
            )
            log.info(
                "embedding model %s loaded in %.0f ms",
                self._embedder.name,
                (time.perf_counter() - started) * 1000,
            )
        return self._embedder

    @property
    def embedder_loaded(self) -> bool:
        return self._embedder is not None

    # ----- model management --------------------------------------------------------

    async def unload(self, name: str, *, force: bool) -> int:
        """Unload once the requests running on ``name`` have finished."""
        if self.store.get(name) is None:
            raise NotFound(f"model {name!r} is not loaded", reason="MODEL_NOT_LOADED")
        if name == self.default_model and not force:
            raise FailedPrecondition(
                f"{name} is the default model; pass force to unload it",
                reason="DEFAULT_MODEL",
            )
        while True:
            try:
                released = await self.engine.call(lambda: self.store.unload(name))
            except FailedPrecondition as exc:
                if exc.reason != "MODEL_BUSY":
                    raise
                await asyncio.sleep(0.05)
                continue
            await self.refresh_health()
            return released
