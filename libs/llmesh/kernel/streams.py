"""Server streams that end in their own task, however the call ends.

grpc's asyncio server consumes a streaming handler's async generator with
``async for``; when the client cancels while the handler waits at ``yield``
(the usual case for a fast stream), grpc drops the generator without closing
it. Python then closes it later from a garbage-collection hook, in another
task and another ``contextvars.Context``: ``finally`` blocks run there, context
tokens fail to reset (``ContextVar ... created in a different Context``, from
ours and from OpenTelemetry's span handling) and the call is misreported.

:class:`StreamCloser`, the outermost interceptor, serves every server stream as a
coroutine that writes each message with ``context.write``, so cancellation
arrives in the RPC's own task, and closes the handler's stream there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from llmesh.kernel.interceptors import WrappingInterceptor


class StreamCloser(WrappingInterceptor):
    """Outermost interceptor: server streams written by a coroutine and closed in its task."""

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_stream is None:
            return handler  # unary calls are untouched
        return super()._wrap(handler, method)

    def wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str
    ) -> Callable[..., Awaitable[Any]]:
        return behavior

    def wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str
    ) -> Callable[..., Any]:
        async def write_all(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            stream = behavior(request, context)
            try:
                async for message in stream:
                    await context.write(message)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

        return write_all
