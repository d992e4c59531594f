"""Fan-out of registry events to ``WatchWorkers`` streams on one replica.

A backend publishes every change it learns of (its own writes, or events read
from Redis) to a :class:`WatchHub`. Each watcher owns a bounded queue; a
watcher that falls too far behind is told to resynchronise and receives a new
snapshot instead of an unbounded backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager

from llmesh_registry.model import Event, Keepalive, Snapshot, Update

# Sentinel queued when a watcher must start again from a snapshot.
_RESYNC = None


class _Quiet:
    """What :meth:`Subscription.get` returns when nothing came in time."""


QUIET = _Quiet()


class Subscription:
    """One watcher's queue of events (``None`` means: take a new snapshot)."""

    def __init__(self, max_queue: int) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=max_queue)

    def offer(self, item: Event | None) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Too slow: drop the backlog, ask for a snapshot instead.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_RESYNC)

    async def get(self, timeout_s: float | None = None) -> Event | _Quiet | None:
        """The next item, or ``QUIET`` when none came within ``timeout_s``."""
        if not timeout_s:
            return await self._queue.get()
        try:
            # A cancelled Queue.get leaves its item queued: nothing is lost.
            async with asyncio.timeout(timeout_s):
                return await self._queue.get()
        except TimeoutError:
            return QUIET


class WatchHub:
    """Distributes events to every subscribed watcher of this process."""

    def __init__(self, *, max_queue: int = 10_000) -> None:
        self._max_queue = max_queue
        self._subs: set[Subscription] = set()

    @property
    def watchers(self) -> int:
        return len(self._subs)

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription(self._max_queue)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def publish(self, event: Event) -> None:
        for sub in self._subs:
            sub.offer(event)

    def resync(self) -> None:
        """Tell every watcher its event sequence has a gap."""
        for sub in self._subs:
            sub.offer(_RESYNC)


async def watch_updates(
    hub: WatchHub,
    *,
    since_revision: int,
    snapshot: Callable[[], Awaitable[Snapshot]],
    replay: Callable[[int], Awaitable[list[Event] | None]],
    keepalive_s: float = 0.0,
) -> AsyncIterator[Update]:
    """A snapshot (or the missed events after ``since_revision``), then every change.

    ``replay(since)`` returns the events after ``since`` in order, or ``None`` when
    the backend no longer holds all of them. Revisions are dense (every change
    adds one), so a jump in the live sequence also triggers a new snapshot. With
    ``keepalive_s``, a :class:`Keepalive` follows the snapshot (or replay) at once,
    announcing the interval, then goes out whenever nothing else did for that long,
    so a watcher can tell a hung registry from a quiet one.
    """
    with hub.subscribe() as sub:
        events = await replay(since_revision) if since_revision > 0 else None
        if events is None:
            snap = await snapshot()
            last = snap.revision
            yield snap
        else:
            last = since_revision
            for event in events:
                if event.revision > last:
                    last = event.revision
                    yield event
        if keepalive_s:
            # Announce the interval at once: on a busy stream (load changes) keepalives
            # may never be due, and the watcher must still know what silence means.
            yield Keepalive(revision=last, interval_s=keepalive_s)
        while True:
            item = await sub.get(keepalive_s)
            if isinstance(item, _Quiet):
                yield Keepalive(revision=last, interval_s=keepalive_s)
                continue
            if item is not None and item.revision <= last:
                continue
            if item is None or item.revision != last + 1:
                snap = await snapshot()
                last = snap.revision
                yield snap
                continue
            last = item.revision
            yield item
