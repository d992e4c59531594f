"""Coalesces concurrent Redis script calls into pipelined round trips.

Under load many heartbeats arrive at once; sending their scripts in one pipeline
(no transaction: each script is atomic on its own) saves a round trip and most
of the client's per-call overhead. Callers await a plain future, so a caller's
cancel or deadline never interrupts a pipeline half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from llmesh.kernel.logging import get_logger

log = get_logger(__name__)

_Pending = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Queue script calls; one background flush sends them as pipelines."""

    def __init__(self, client: aioredis.Redis, *, max_batch: int = 256) -> None:
        self._client = client
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="registry-redis-batch")
        return await future

    async def _flush(self) -> None:
        """Send pending calls until none are left (started on demand, so not supervised).

        Whatever goes wrong with a batch fails exactly that batch's callers, and
        the flusher goes on with the next one: no caller waits out its deadline.
        """
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            batch = [item for item in batch if not item[3].done()]
            if not batch:
                continue
            try:
                await self._send(batch)
            except Exception as exc:
                if not isinstance(exc, RedisError | OSError | TimeoutError):
                    log.error("redis script batch failed", exc_info=exc)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)

    async def _send(self, batch: list[_Pending]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            await script(keys=keys, args=args, client=pipe)  # queued, not sent
        results = await pipe.execute(raise_on_error=False)
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._flusher, timeout=2.0)
