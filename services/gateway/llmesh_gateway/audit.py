"""Audit log: auth failures, key changes and admin calls, persisted in the gateway store.

Recording an event never waits for the store: :meth:`AuditLog.record` puts it on a
bounded in-memory queue and one background loop (under the kernel ``Supervisor``)
writes the queue in batches, one transaction each. A flood of unauthenticated calls
(each one audited) therefore costs the caller a queue append, not a disk write.

When the queue is full, new events are dropped: each is counted
(``gateway.audit.dropped``) and a warning is logged at most once per
``drop_log_interval_s``. An event that made it onto the queue is acknowledged:
:meth:`AuditLog.close` writes everything still queued before the store closes, and
a batch the store refused goes back to the head of the queue for the next flush.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from llmesh.kernel.context import current_request
from llmesh.kernel.errors import LlmeshError
from llmesh.kernel.logging import get_logger
from llmesh.kernel.tasks import SupervisedTask, Supervisor
from llmesh.kernel.telemetry import meter
from llmesh_gateway.principal import Principal
from llmesh_gateway.settings import AuditSettings
from llmesh_gateway.store import AuditRecord, GatewayStore

log = get_logger(__name__)


def outcome_of(error: BaseException | None) -> str:
    """The audited outcome of a call: ``OK`` or its status code name."""
    if error is None:
        return "OK"
    if isinstance(error, LlmeshError):
        return error.code.name
    if isinstance(error, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "CANCELLED" if type(error).__name__ == "CancelledError" else "INTERNAL"


class AuditLog:
    """Queues audit events and writes them in batches; a store failure never fails a call."""

    def __init__(
        self,
        store: GatewayStore,
        settings: AuditSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.settings = settings or AuditSettings()
        self._clock = clock
        self._monotonic = monotonic
        self._queue: collections.deque[AuditRecord] = collections.deque()
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: SupervisedTask | None = None
        self._closed = False
        self.dropped = 0
        self.written = 0
        self._dropped_unlogged = 0
        self._last_drop_log = float("-inf")
        m = meter("llmesh.gateway")
        self._dropped_counter = m.create_counter(
            "gateway.audit.dropped", description="Audit events dropped because the queue was full"
        )
        self._written_counter = m.create_counter(
            "gateway.audit.written", description="Audit events written to the store"
        )

    @property
    def depth(self) -> int:
        """Events queued and not yet written."""
        return len(self._queue)

    def start(self, supervisor: Supervisor) -> None:
        """Run the flush loop under ``supervisor`` (restarted with backoff if it crashes)."""
        self._task = supervisor.spawn("audit-flush", self._run)

    async def record(
        self,
        *,
        principal: Principal | str | None,
        action: str,
        outcome: str,
        detail: str = "",
    ) -> None:
        """Queue one event (never waits for the store). ``principal`` may be a name."""
        ctx = current_request()
        if isinstance(principal, Principal):
            subject, tenant = principal.subject, principal.tenant
        else:
            subject, tenant = principal or "anonymous", ""
        self.enqueue(
            AuditRecord(
                time=self._clock(),
                principal=subject,
                tenant=tenant,
                action=action,
                outcome=outcome,
                detail=detail[:1024],
                request_id=ctx.request_id if ctx else "",
            )
        )

    def enqueue(self, event: AuditRecord) -> bool:
        """Queue ``event``; False (dropped and counted) when the queue is full or closed."""
        if self._closed or len(self._queue) >= self.settings.queue_size:
            self._drop(1)
            return False
        self._queue.append(event)
        if len(self._queue) >= self.settings.batch_size:
            self._wake.set()
        return True

    @contextlib.asynccontextmanager
    async def audited(self, *, principal: Principal | str, action: str) -> AsyncIterator[None]:
        """Audit the body as one call: its outcome, and the detail it noted in the context."""
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            ctx = current_request()
            detail = str(ctx.attributes.get("audit_detail", "")) if ctx else ""
            await self.record(
                principal=principal, action=action, outcome=outcome_of(error), detail=detail
            )

    async def flush(self) -> int:
        """Write queued events in batches until the queue is empty; returns how many.

        Stops at the first batch the store refuses (it goes back to the queue's head).
        """
        total = 0
        async with self._flushing:
            while self._queue:
                batch = [
                    self._queue.popleft()
                    for _ in range(min(self.settings.batch_size, len(self._queue)))
                ]
                try:
                    await self._store.add_audits(batch)
                except asyncio.CancelledError:
                    self._requeue(batch)  # written again by the final flush (at least once)
                    raise
                except Exception as exc:
                    self._requeue(batch)
                    log.error("could not write %d audit events: %s", len(batch), exc)
                    break
                total += len(batch)
                self.written += len(batch)
                self._written_counter.add(len(batch))
        return total

    async def close(self, *, timeout_s: float = 10.0) -> None:
        """Stop the loop, then write everything still queued (graceful shutdown).

        The loop is asked to finish (it writes what it holds first); only one still
        busy after ``timeout_s`` (a store that does not answer) is cancelled.
        """
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await asyncio.wait({self._task.task}, timeout=timeout_s)
            await self._task.stop()
            self._task = None
        await self.flush()
        if self._queue:
            log.error("audit log closed with %d events unwritten", len(self._queue))
        self._log_drops(force=True)

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            self._log_drops()

    def _requeue(self, batch: list[AuditRecord]) -> None:
        room = self.settings.queue_size - len(self._queue)
        keep = batch[: max(0, room)]
        self._queue.extendleft(reversed(keep))
        if len(batch) > len(keep):
            self._drop(len(batch) - len(keep))

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._dropped_unlogged += count
        self._dropped_counter.add(count)
        self._log_drops()

    def _log_drops(self, *, force: bool = False) -> None:
        if not self._dropped_unlogged:
            return
        now = self._monotonic()
        if not force and now - self._last_drop_log < self.settings.drop_log_interval_s:
            return
        log.warning(
            "audit queue full (%d events): dropped %d audit events since the last report",
            self.settings.queue_size,
            self._dropped_unlogged,
        )
        self._dropped_unlogged = 0
        self._last_drop_log = now
