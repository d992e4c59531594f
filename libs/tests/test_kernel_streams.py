"""``until_closing``: an endless stream that ends, and closes its source, when its
server starts to stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmesh.kernel.streams import until_closing


class Source:
    """An endless async generator that records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False
        self.next = asyncio.Queue[int]()

    async def items(self) -> AsyncIterator[int]:
        try:
            while True:
                yield await self.next.get()
        finally:
            self.closed = True


async def test_items_pass_until_closing_then_the_source_is_closed() -> None:
    closing, source = asyncio.Event(), Source()
    stream = until_closing(closing, source.items())
    for n in (1, 2):
        source.next.put_nowait(n)
    assert [await anext(stream), await anext(stream)] == [1, 2]
    waiting = asyncio.ensure_future(anext(stream))  # blocked: nothing queued
    await asyncio.sleep(0)
    assert not waiting.done()
    closing.set()
    assert isinstance(
        (await asyncio.gather(waiting, return_exceptions=True))[0], StopAsyncIteration
    )
    assert source.closed


async def test_a_finite_source_ends_the_stream() -> None:
    async def three() -> AsyncIterator[int]:
        for n in range(3):
            yield n

    assert [n async for n in until_closing(asyncio.Event(), three())] == [0, 1, 2]


async def test_closing_set_before_the_first_item_yields_nothing() -> None:
    closing, source = asyncio.Event(), Source()
    closing.set()
    assert [n async for n in until_closing(closing, source.items())] == []
    assert source.closed


async def test_a_cancelled_consumer_closes_the_source() -> None:
    closing, source = asyncio.Event(), Source()

    async def consume() -> list[int]:
        return [n async for n in until_closing(closing, source.items())]

    task = asyncio.ensure_future(consume())
    source.next.put_nowait(7)
    for _ in range(100):  # let the consumer take the item and wait for the next
        await asyncio.sleep(0)
    assert source.next.empty() and not task.done()
    task.cancel()
    (ended,) = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(ended, asyncio.CancelledError)
    assert source.closed
