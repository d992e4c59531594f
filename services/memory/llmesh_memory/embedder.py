"""Sentence embeddings: from inference workers' ``InferenceService.Embed``, or in-process.

Which worker: a fixed address (:class:`FixedTargets`) or the READY workers the
registry lists (:class:`RegistryTargets`, fed by the kernel's registry watch),
balanced by calls in flight (the less busy of two at random) with failover: a
worker that fails is skipped for ``cooldown_s`` and the next one is tried while the
caller's deadline allows. Calls go through the kernel's upstream client (deadline
share, trace context, request id). When no worker answers, searches degrade to
keyword-only at once instead of waiting on a dead worker.

:class:`LocalEmbedder` (setting ``local_embedder``) runs the same MiniLM code as the
workers (:mod:`llmesh.embeddings`) in this process on one dedicated thread: a query
costs one forward pass and no RPC. Both keep recent vectors in a :class:`VectorCache`
(LRU keyed by model and text), so a repeated query is not embedded again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from llmesh.kernel.channels import ChannelPool
from llmesh.kernel.config import ClientTlsSettings
from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh.kernel.registry_watch import RegistryCache
from llmesh.kernel.upstream import Share, unary
from llmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc

if TYPE_CHECKING:
    from llmesh.embeddings import MiniLMEmbedder

log = get_logger(__name__)

MAX_TEXTS_PER_CALL = 256
# Share of the caller's remaining time one Embed call may use (the rest is the search's).
EMBED_SHARE = 0.6


class EmbedderUnavailable(Exception):
    """No embedder answered; the message says why."""


class Embedder(Protocol):
    """Anything that turns texts into unit vectors, shape ``(len(texts), dim)``."""

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...

    async def close(self) -> None: ...


class Targets(Protocol):
    """Where Embed calls go: addresses to try, and what happened to each call."""

    def candidates(self) -> list[str]:
        """Addresses worth trying now, best first (may be empty)."""
        ...

    def started(self, address: str) -> None: ...

    def finished(self, address: str, *, ok: bool) -> None: ...


def unit_rows(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows scaled to length 1 (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class VectorCache:
    """The last ``size`` vectors computed, keyed by (model, text); ``size`` 0 keeps none."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: OrderedDict[tuple[str, str], npt.NDArray[np.float32]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    async def embed(
        self,
        model: str,
        texts: Sequence[str],
        compute: Callable[[Sequence[str]], Awaitable[npt.NDArray[np.float32]]],
    ) -> npt.NDArray[np.float32]:
        """Vectors of ``texts``: cached ones reused, the rest from ``await compute(missing)``.

        Missing texts are computed once each (duplicates in ``texts`` share a row).
        """
        found = {t: self._rows[(model, t)] for t in texts if (model, t) in self._rows}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            computed: npt.NDArray[np.float32] = await compute(missing)
            found.update(zip(missing, computed, strict=True))
        out = np.stack([found[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)
        if self.size:
            for text in dict.fromkeys(texts):
                self._rows[(model, text)] = found[text]
                self._rows.move_to_end((model, text))
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)
        return out


class _Health:
    """Calls in flight and failure cooldowns per address."""

    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self.in_flight: dict[str, int] = {}
        self.down_until: dict[str, float] = {}

    def up(self, address: str, now: float) -> bool:
        return now >= self.down_until.get(address, 0.0)

    def started(self, address: str) -> None:
        self.in_flight[address] = self.in_flight.get(address, 0) + 1

    def finished(self, address: str, *, ok: bool) -> None:
        left = self.in_flight.get(address, 1) - 1
        if left > 0:
            self.in_flight[address] = left
        else:
            self.in_flight.pop(address, None)
        if ok:
            self.down_until.pop(address, None)
        else:
            self.down_until[address] = time.monotonic() + self.cooldown_s


class FixedTargets(_Health):
    """One configured address (``embedder_target``)."""

    def __init__(self, address: str, *, cooldown_s: float) -> None:
        super().__init__(cooldown_s)
        self.address = address

    def candidates(self) -> list[str]:
        return [self.address] if self.up(self.address, time.monotonic()) else []


class RegistryTargets(_Health):
    """READY workers from the registry; those with ``model`` loaded when one is named.

    Order: the less busy of two random candidates first (power of two choices), then
    the rest at random, so load spreads and a failed worker's calls move elsewhere.
    """

    def __init__(
        self, cache: RegistryCache, *, model: str = "", cooldown_s: float, seed: int | None = None
    ) -> None:
        super().__init__(cooldown_s)
        self.cache = cache
        self.model = model
        self._random = random.Random(seed)

    def _serves(self, worker: common_pb2.WorkerInfo) -> bool:
        if worker.state != common_pb2.WORKER_STATE_READY:
            return False
        if not self.model:
            return True
        loaded = {m.name for m in worker.models if m.loaded} | set(worker.models_loaded)
        return self.model in loaded or self.model in worker.models_available

    def candidates(self) -> list[str]:
        now = time.monotonic()
        addresses = [
            w.address
            for w in self.cache.workers.values()
            if self._serves(w) and self.up(w.address, now)
        ]
        self._random.shuffle(addresses)
        if len(addresses) >= 2:
            a, b = addresses[0], addresses[1]
            if self.in_flight.get(b, 0) < self.in_flight.get(a, 0):
                addresses[0], addresses[1] = b, a
        return addresses


class GrpcEmbedder:
    """Client of ``llmesh.v1.InferenceService/Embed`` on the workers ``targets`` names."""

    def __init__(
        self,
        targets: Targets | str,
        *,
        model: str = "",
        timeout_s: float = 5.0,
        cooldown_s: float = 2.0,
        tls: ClientTlsSettings | None = None,
        cache_size: int = 1024,
        max_attempts: int = 3,
    ) -> None:
        self.targets: Targets = (
            FixedTargets(targets, cooldown_s=cooldown_s) if isinstance(targets, str) else targets
        )
        self.model = model
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._pool = ChannelPool(tls=tls)
        self.cache = VectorCache(cache_size)

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit vectors of ``texts``; recently seen texts come from an LRU cache."""
        return await self.cache.embed(self.model, texts, self._fetch)

    async def _fetch(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(texts), MAX_TEXTS_PER_CALL):
            rows.append(await self._fetch_chunk(list(texts[start : start + MAX_TEXTS_PER_CALL])))
        return unit_rows(np.concatenate(rows))

    async def _fetch_chunk(self, chunk: list[str]) -> npt.NDArray[np.float32]:
        """One Embed call, failing over to the next candidate worker."""
        reasons: list[str] = []
        for address in self.targets.candidates()[: self.max_attempts]:
            stub = inference_pb2_grpc.InferenceServiceStub(self._pool.get(address))
            self.targets.started(address)
            ok = False
            try:
                reply = await unary(
                    stub.Embed,
                    inference_pb2.InferenceServiceEmbedRequest(texts=chunk, model=self.model),
                    what="embedding",
                    share=Share(EMBED_SHARE, self.timeout_s),
                )
                if len(reply.embeddings) != len(chunk):
                    reasons.append("wrong number of vectors")
                    continue
                ok = True
                return np.array([e.values for e in reply.embeddings], dtype=np.float32)
            except LlmeshError as exc:
                reasons.append(exc.code.name)
                log.warning(
                    "embedder %s failed: %s",
                    address,
                    exc.code.name,
                    extra={"embedder": address, "grpc_code": exc.code.name},
                )
                if exc.code.name == "UNAVAILABLE":
                    self._pool.discard(address)
            finally:
                self.targets.finished(address, ok=ok)
        if not reasons:
            raise EmbedderUnavailable("no embedder is available (none READY, or all failed)")
        raise EmbedderUnavailable(f"no embedder answered ({', '.join(reasons)})")

    async def close(self) -> None:
        await self._pool.close()


class NoEmbedder:
    """Used when no embedder is configured: every search is keyword-only."""

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise EmbedderUnavailable("no embedder is configured")

    async def close(self) -> None:
        return None


class LocalEmbedder:
    """MiniLM computed in this process (:mod:`llmesh.embeddings`), on one MLX thread.

    The same model code and weights as the inference workers, so the vectors match
    theirs (to float rounding). The model loads on :meth:`start` (or the first call).
    Long lists are embedded ``piece_size`` texts at a time, each a separate turn of
    the thread, so a query waits behind at most one piece of a back-fill batch.
    A model that cannot be loaded makes every call ``EmbedderUnavailable`` (searches
    run keyword-only, marked degraded) and is tried again after ``retry_s``.
    """

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        cache_size: int = 1024,
        piece_size: int = 16,
        retry_s: float = 30.0,
        loader: Callable[[Path | None], MiniLMEmbedder] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.piece_size = max(1, piece_size)
        self.retry_s = retry_s
        self.cache = VectorCache(cache_size)
        self._loader = loader or _load_minilm
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="memory-embedder")
        self._model: MiniLMEmbedder | None = None
        self._failed: tuple[float, str] | None = None  # (when, why) of the last failed load
        self.model = ""

    async def start(self) -> None:
        """Load the model now (and run it once), so the first query pays neither."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._compute, ["warm up"])
        except EmbedderUnavailable as exc:
            log.warning("in-process embedder unavailable: %s", exc)

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit vectors of ``texts`` (recent ones from the cache)."""
        return await self.cache.embed(self.model, texts, self._pieces)

    async def _pieces(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        loop = asyncio.get_running_loop()
        rows = [
            await loop.run_in_executor(
                self._thread, self._compute, list(texts[i : i + self.piece_size])
            )
            for i in range(0, len(texts), self.piece_size)
        ]
        return np.concatenate(rows)

    def _compute(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """On the MLX thread: load the model if needed, then embed."""
        model = self._model or self._load()
        vectors: npt.NDArray[np.float32] = model.embed(texts).vectors
        return vectors

    def _load(self) -> MiniLMEmbedder:
        if self._failed is not None and time.monotonic() - self._failed[0] < self.retry_s:
            raise EmbedderUnavailable(f"in-process embedder failed to load: {self._failed[1]}")
        try:
            model = self._loader(self.model_dir)
        except (LlmeshError, OSError, ImportError) as exc:
            self._failed = (time.monotonic(), str(exc))
            raise EmbedderUnavailable(f"in-process embedder failed to load: {exc}") from exc
        self._model, self._failed, self.model = model, None, model.name
        log.info("in-process embedder loaded: %s", model.name)
        return model

    async def close(self) -> None:
        """Drop queued work and wait for the running piece: MLX's thread must end before
        the interpreter does (a live one aborts the process at exit)."""
        await asyncio.to_thread(self._thread.shutdown, wait=True, cancel_futures=True)


def _load_minilm(model_dir: Path | None) -> MiniLMEmbedder:
    from llmesh.embeddings import MiniLMEmbedder

    return MiniLMEmbedder.load(model_dir)
