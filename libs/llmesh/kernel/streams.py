"""Endless server streams that end when their server stops.

A watch stream never finishes by itself: left open, it holds a stopping server for
its whole grace period and is then cancelled, which grpc-aio logs as an unhandled
``CancelledError``. Wrapped in :func:`until_closing` with ``ServiceHost.closing``, it
ends normally (status OK) as the drain begins, and its client reconnects elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def until_closing(closing: asyncio.Event, source: AsyncIterator[T]) -> AsyncIterator[T]:
    """The items of ``source`` until ``closing`` is set; then ``source`` is closed and
    the stream ends normally (for endless server streams: see ``ServiceHost.closing``)."""
    closed = asyncio.ensure_future(closing.wait())
    item: asyncio.Future[T] | None = None
    try:
        while True:
            item = asyncio.ensure_future(anext(source))
            await asyncio.wait({item, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                return
            try:
                value = item.result()
            except StopAsyncIteration:
                return
            item = None
            yield value
    finally:
        closed.cancel()
        if item is not None and not item.done():
            item.cancel()
            await asyncio.wait({item})
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
