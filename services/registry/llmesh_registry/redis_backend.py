"""Redis registry backend: several registry replicas share one Redis.

Layout (every key under one hash tag, default ``{llmesh-registry}``):

- ``<p>:w:<id>``  hash per worker (static record, state, load, lease, times),
  with ``PEXPIRE`` = TTL + eviction time, so Redis drops it even with no
  registry running;
- ``<p>:leases``  sorted set of worker ids scored by when to look at them next
  (lease expiry, then eviction time), scanned by every replica's sweeper;
- ``<p>:rev``     the revision counter;
- ``<p>:events``  a stream whose entry ids are ``<revision>-0``: the replayable
  history for ``WatchWorkers`` resume, and the feed every replica tails to fan
  changes out to its own watchers.

Every write is one Lua script (atomic renew, revision and event together), and
the clock is Redis's own ``TIME``, so replicas never disagree about expiry.
The scripts and the record encoding are in ``redis_codec``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from llmesh.kernel.context import outbound_timeout
from llmesh.kernel.errors import FailedPrecondition, NotFound, Unavailable
from llmesh.kernel.logging import get_logger
from llmesh.kernel.tasks import SupervisedTask, Supervisor
from llmesh.kernel.telemetry import tracer
from llmesh.v1 import common_pb2
from llmesh_registry.backend import RegistryBackend
from llmesh_registry.model import (
    LEASE_EXPIRED_REASON,
    READY,
    UNHEALTHY,
    UNSPECIFIED,
    Event,
    HeartbeatResult,
    HeartbeatUpdate,
    Lease,
    LeasePolicy,
    Snapshot,
)
from llmesh_registry.redis_batch import ScriptBatcher
from llmesh_registry.redis_codec import (
    decode_worker,
    event_from_entry,
    load_scripts,
    pairs,
    static_record,
)
from llmesh_registry.watch import WatchHub

log = get_logger(__name__)
_tracer = tracer(__name__)
T = TypeVar("T")


def _reraise_cancel(exc: BaseException | None) -> None:
    """redis-py may absorb a task cancel (returning normally, or raising a
    connection error); restore the cancel so tasks stop when asked."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


class RedisBackend(RegistryBackend):
    """Registry state in Redis; watch events tailed from a Redis stream."""

    def __init__(
        self,
        policy: LeasePolicy,
        *,
        url: str,
        prefix: str = "{llmesh-registry}",
        hub: WatchHub | None = None,
        history: int = 10_000,
        op_timeout_s: float = 2.0,
        sweep_batch: int = 500,
        supervisor: Supervisor | None = None,
    ) -> None:
        super().__init__(policy, hub)
        self._url = url
        self._prefix = prefix
        self._history = history
        self._op_timeout_s = op_timeout_s
        self._sweep_batch = sweep_batch
        self._leases = f"{prefix}:leases"
        self._rev = f"{prefix}:rev"
        self._stream = f"{prefix}:events"
        self._redis: aioredis.Redis | None = None
        self._tail_redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._supervisor = supervisor or Supervisor()
        self._tail_task: SupervisedTask | None = None
        self._tail_last = 0  # last event revision published (a restarted tail resumes here)
        self._batcher: ScriptBatcher | None = None
        self._stopping = False
        self._block_ms = 250

    def _wkey(self, worker_id: str) -> str:
        return f"{self._prefix}:w:{worker_id}"

    @property
    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("RedisBackend.start() was not called")
        return self._redis

    async def start(self) -> None:
        self._redis = aioredis.Redis.from_url(
            self._url, socket_timeout=self._op_timeout_s, socket_connect_timeout=self._op_timeout_s
        )
        self._tail_redis = aioredis.Redis.from_url(
            self._url, socket_timeout=None, socket_connect_timeout=self._op_timeout_s
        )
        self._scripts = {
            name: self._client.register_script(source) for name, source in load_scripts().items()
        }
        self._batcher = ScriptBatcher(self._client)
        start_rev = 0
        try:
            start_rev = await self._current_revision()
        except RedisError as exc:
            log.warning("redis unavailable at start (%s); will keep trying", exc)
        self._tail_last = start_rev
        self._tail_task = self._supervisor.spawn("registry-redis-tail", self._tail)

    async def close(self) -> None:
        self._stopping = True
        task, self._tail_task = self._tail_task, None
        if task is not None:
            # The tail loop checks ``_stopping`` after every short blocking read;
            # cancelling a blocking XREAD can leave redis-py waiting on the socket.
            await asyncio.wait({task.task}, timeout=self._block_ms / 1000 + self._op_timeout_s)
            if not task.task.done():
                task.task.cancel()
                await asyncio.wait({task.task}, timeout=1.0)
        if self._batcher is not None:
            await self._batcher.close()
        for client in (self._redis, self._tail_redis):
            if client is not None:
                await client.aclose()
        self._redis = self._tail_redis = None

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation within the caller's remaining time."""
        timeout = outbound_timeout(self._op_timeout_s)
        try:
            with _tracer.start_as_current_span(f"registry.redis.{what}"):
                async with asyncio.timeout(timeout):
                    result = await op()
        except ResponseError:
            raise  # a bug (bad script or key type), not an outage
        except (RedisError, TimeoutError, OSError) as exc:
            _reraise_cancel(exc)
            raise Unavailable(
                f"registry store unavailable during {what}: {type(exc).__name__}",
                reason="REGISTRY_STORE_UNAVAILABLE",
                retry_after_s=1.0,
            ) from exc
        _reraise_cancel(None)
        return result

    async def _current_revision(self) -> int:
        """The revision counter, created (from the clock, in microseconds) if missing."""
        await self._client.set(self._rev, time.time_ns() // 1000, nx=True)
        raw = await self._client.get(self._rev)
        return int(raw) if raw is not None else 0

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._op_timeout_s):
                ok = bool(await self._client.ping())
        except (RedisError, TimeoutError, OSError) as exc:
            _reraise_cancel(exc)
            return False
        _reraise_cancel(None)
        return ok

    def _batched(self, name: str, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        if self._batcher is None:
            raise RuntimeError("RedisBackend.start() was not called")
        return self._batcher.call(self._scripts[name], keys, args)

    def _keys(self, worker_id: str) -> list[str]:
        return [self._wkey(worker_id), self._leases, self._rev, self._stream]

    async def register(self, worker: common_pb2.WorkerInfo, lease_id: str) -> Lease:
        args = [
            worker.worker_id,
            static_record(worker),
            json.dumps(list(worker.models_loaded)),
            int(worker.state),
            worker.state_reason,
            worker.load.SerializeToString(deterministic=True),
            lease_id,
            self.policy.ttl_ms,
            self.policy.evict_after_ms,
            self._history,
        ]
        revision, _expires = await self._call(
            "register", lambda: self._batched("register", self._keys(worker.worker_id), args)
        )
        return Lease(lease_id=lease_id, ttl_ms=self.policy.ttl_ms, revision=int(revision))

    def _raise_for(self, code: int, worker_id: str, lease_id: str) -> None:
        if code == -1:
            raise NotFound(f"worker {worker_id!r} is not registered", reason="WORKER_NOT_FOUND")
        if code == -2:
            raise FailedPrecondition(
                f"lease {lease_id!r} is not the current lease of {worker_id!r}",
                reason="STALE_LEASE",
            )

    async def heartbeat(self, update: HeartbeatUpdate) -> HeartbeatResult:
        args = [
            update.worker_id,
            update.lease_id,
            self.policy.ttl_ms,
            self.policy.evict_after_ms,
            self._history,
            update.load.SerializeToString(deterministic=True) if update.load is not None else b"",
            int(update.state),
            update.state_reason,
            json.dumps(list(update.models_loaded)) if update.models_loaded else "",
        ]
        result = await self._call(
            "heartbeat", lambda: self._batched("heartbeat", self._keys(update.worker_id), args)
        )
        self._raise_for(int(result[0]), update.worker_id, update.lease_id)
        return HeartbeatResult(
            ttl_ms=self.policy.ttl_ms, revision=int(result[0]), state=int(result[1])
        )

    async def deregister(self, worker_id: str, lease_id: str) -> int:
        args = [worker_id, lease_id, self._history]
        result = await self._call(
            "deregister", lambda: self._batched("deregister", self._keys(worker_id), args)
        )
        self._raise_for(int(result[0]), worker_id, lease_id)
        return int(result[0])

    async def set_state(
        self, worker_id: str, state: int, reason: str
    ) -> tuple[common_pb2.WorkerInfo, int]:
        script = self._scripts["set_state"]
        args = [worker_id, int(state), reason, self._history, int(READY)]
        result = await self._call(
            "set_state", lambda: script(keys=self._keys(worker_id), args=args)
        )
        self._raise_for(int(result[0]), worker_id, "")
        return decode_worker(worker_id, pairs(result[1])), int(result[0])

    async def snapshot(self) -> Snapshot:
        script = self._scripts["snapshot"]
        result = await self._call(
            "snapshot",
            lambda: script(keys=[self._leases, self._rev], args=[f"{self._prefix}:w:"]),
        )
        workers = [decode_worker(item[0].decode(), pairs(item[1])) for item in result[1:]]
        workers.sort(key=lambda w: w.worker_id)
        return Snapshot(revision=int(result[0]), workers=workers)

    async def replay(self, since_revision: int) -> list[Event] | None:
        async def read() -> tuple[int, list[Any]]:
            current = await self._current_revision()
            if since_revision >= current:
                return current, []
            entries: list[Any] = await self._client.xrange(  # type: ignore[assignment]
                self._stream, min=f"{since_revision + 1}-0", max="+", count=self._history + 1
            )
            return current, entries

        current, entries = await self._call("replay", read)
        if since_revision > current:
            return None
        if since_revision == current:
            return []
        events = [event_from_entry(eid, data) for eid, data in entries]
        if not events or events[0].revision != since_revision + 1:
            return None
        return events

    async def sweep(self) -> int:
        script = self._scripts["sweep"]
        args = [
            f"{self._prefix}:w:",
            self.policy.evict_after_ms,
            self._history,
            self._sweep_batch,
            int(UNHEALTHY),
            LEASE_EXPIRED_REASON,
        ]
        result = await self._call(
            "sweep", lambda: script(keys=[self._leases, self._rev, self._stream], args=args)
        )
        return int(result)

    async def _tail(self) -> None:
        """Read the event stream and publish to this replica's watchers.

        Runs supervised: after a crash it restarts from the last revision it
        published, and watchers resync (events may have been skipped).
        """
        assert self._tail_redis is not None
        last = self._tail_last
        if self._tail_task is not None and self._tail_task.crashes:
            self.hub.resync()
        backoff = 0.1
        while not self._stopping:
            try:
                if last == 0:
                    last = await self._current_revision()
                reply: Any = await self._tail_redis.xread(
                    {self._stream: f"{last}-0"}, block=self._block_ms, count=1000
                )
                _reraise_cancel(None)
                backoff = 0.1
                if not reply:
                    # Redis restarted or was flushed: start over from its counter.
                    current = await self._current_revision()
                    if current < last:
                        last = self._tail_last = current
                        self.hub.resync()
                    continue
                for entry_id, data in reply[0][1]:
                    event = event_from_entry(entry_id, data)
                    if event.revision != last + 1:
                        self.hub.resync()
                    last = event.revision
                    if event.type != UNSPECIFIED:
                        self.hub.publish(event)
                self._tail_last = last
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                _reraise_cancel(exc)
                if self._stopping:
                    return
                log.warning("registry event feed interrupted: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self.hub.resync()
