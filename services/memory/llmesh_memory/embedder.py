"""Sentence embeddings from an inference worker's ``InferenceService.Embed``.

Calls go through the kernel channel, so they carry the caller's remaining deadline
and trace context. After a failure the client stays "down" for ``cooldown_s``:
searches degrade to keyword-only at once instead of waiting on a dead worker.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import grpc
import numpy as np
import numpy.typing as npt

from llmesh.kernel.channels import create_channel
from llmesh.kernel.config import ClientTlsSettings
from llmesh.kernel.context import remaining_s
from llmesh.kernel.logging import get_logger
from llmesh.v1 import inference_pb2, inference_pb2_grpc

log = get_logger(__name__)

MAX_TEXTS_PER_CALL = 256


class EmbedderUnavailable(Exception):
    """No embedder answered; the message says why."""


class Embedder(Protocol):
    """Anything that turns texts into unit vectors, shape ``(len(texts), dim)``."""

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...

    async def close(self) -> None: ...


def unit_rows(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows scaled to length 1 (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class GrpcEmbedder:
    """Client of ``llmesh.v1.InferenceService/Embed`` at ``target``."""

    def __init__(
        self,
        target: str,
        *,
        model: str = "",
        timeout_s: float = 5.0,
        cooldown_s: float = 2.0,
        tls: ClientTlsSettings | None = None,
        cache_size: int = 1024,
    ) -> None:
        self.target = target
        self.model = model
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self._channel = create_channel(target, tls=tls)
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._down_until = 0.0
        self._cache: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self.cache_size = cache_size

    @property
    def available(self) -> bool:
        """False while in the cooldown after a failure."""
        return time.monotonic() >= self._down_until

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit vectors of ``texts``; recently seen texts come from an LRU cache."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vector in zip(missing, await self._fetch(missing), strict=True):
                self._cache[text] = vector
        out = np.stack([self._cache[t] for t in texts])
        for text in texts:
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    async def _fetch(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not self.available:
            raise EmbedderUnavailable(f"embedder at {self.target} failed recently")
        # Leave part of the caller's time for the search itself.
        left = remaining_s()
        timeout = self.timeout_s if left is None else max(0.001, min(self.timeout_s, left * 0.6))
        rows: list[npt.NDArray[np.float32]] = []
        try:
            for start in range(0, len(texts), MAX_TEXTS_PER_CALL):
                chunk = list(texts[start : start + MAX_TEXTS_PER_CALL])
                reply = await self._stub.Embed(
                    inference_pb2.InferenceServiceEmbedRequest(texts=chunk, model=self.model),
                    timeout=timeout,
                )
                if len(reply.embeddings) != len(chunk):
                    raise EmbedderUnavailable("embedder returned the wrong number of vectors")
                rows.append(np.array([e.values for e in reply.embeddings], dtype=np.float32))
        except grpc.aio.AioRpcError as exc:
            self._down_until = time.monotonic() + self.cooldown_s
            log.warning(
                "embedder %s failed: %s",
                self.target,
                exc.code().name,
                extra={"embedder": self.target, "grpc_code": exc.code().name},
            )
            raise EmbedderUnavailable(
                f"embedder at {self.target} answered {exc.code().name}"
            ) from None
        return unit_rows(np.concatenate(rows))

    async def close(self) -> None:
        await self._channel.close(None)


class NoEmbedder:
    """Used when no embedder is configured: every search is keyword-only."""

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise EmbedderUnavailable("no embedder is configured")

    async def close(self) -> None:
        return None
