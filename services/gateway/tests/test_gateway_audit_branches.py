"""The audit queue's failure paths in process, over a store that fails on command:
outcomes by error type, a refused batch put back at the head, drops when the queue is
full, cancellation during a write, and a close that cannot write everything."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from llmesh.kernel.errors import NotFound, Unavailable
from llmesh_gateway.audit import AuditLog, outcome_of
from llmesh_gateway.settings import AuditSettings
from llmesh_gateway.store import AuditRecord


@dataclass
class Store:
    fail: BaseException | None = None
    batches: list[list[str]] = field(default_factory=list)

    async def add_audits(self, batch: list[AuditRecord]) -> None:
        if self.fail is not None:
            raise self.fail
        self.batches.append([r.action for r in batch])


def _event(action: str) -> AuditRecord:
    return AuditRecord(
        time=1.0, principal="p", tenant="t", action=action, outcome="OK", detail="", request_id=""
    )


def test_outcome_of() -> None:
    assert outcome_of(None) == "OK"
    assert outcome_of(NotFound("x")) == "NOT_FOUND"
    assert outcome_of(Unavailable("x")) == "UNAVAILABLE"
    assert outcome_of(TimeoutError()) == "DEADLINE_EXCEEDED"
    assert outcome_of(asyncio.CancelledError()) == "CANCELLED"
    assert outcome_of(RuntimeError()) == "INTERNAL"


async def test_a_refused_batch_goes_back_to_the_head(caplog: pytest.LogCaptureFixture) -> None:
    store = Store(fail=OSError("disk full"))
    audit = AuditLog(store, AuditSettings(batch_size=2, queue_size=10))  # type: ignore[arg-type]
    for action in "abc":
        assert audit.enqueue(_event(action))
    with caplog.at_level(logging.ERROR):
        assert await audit.flush() == 0
    assert [e.action for e in audit._queue] == ["a", "b", "c"]
    assert "could not write 2 audit events: disk full" in caplog.text
    store.fail = None
    assert await audit.flush() == 3
    assert store.batches == [["a", "b"], ["c"]]
    assert audit.written == 3 and audit.depth == 0


async def test_a_refused_batch_that_no_longer_fits_is_dropped() -> None:
    audit = AuditLog(Store(), AuditSettings(batch_size=3, queue_size=4))  # type: ignore[arg-type]
    batch = [_event(a) for a in "abc"]
    for action in "xyz":
        audit.enqueue(_event(action))
    audit._requeue(batch)
    assert [e.action for e in audit._queue] == ["a", "x", "y", "z"]
    assert audit.dropped == 2
    audit._requeue([_event("q")])
    assert audit.dropped == 3
    assert audit.depth == 4


async def test_a_write_cancelled_midway_is_kept_for_the_final_flush() -> None:
    store = Store(fail=asyncio.CancelledError())
    audit = AuditLog(store, AuditSettings(batch_size=5))  # type: ignore[arg-type]
    audit.enqueue(_event("a"))
    with pytest.raises(asyncio.CancelledError):
        await audit.flush()
    assert [e.action for e in audit._queue] == ["a"]


async def test_a_close_that_cannot_write_says_how_many_are_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    audit = AuditLog(Store(fail=OSError("down")), AuditSettings(queue_size=1))  # type: ignore[arg-type]
    assert audit.enqueue(_event("a"))
    assert not audit.enqueue(_event("b"))  # queue full: dropped
    with caplog.at_level(logging.WARNING):
        await audit.close()
    assert "audit log closed with 1 events unwritten" in caplog.text
    assert "dropped 1 audit events since the last report" in caplog.text
    assert not audit.enqueue(_event("c"))  # closed
    assert audit.dropped == 2
