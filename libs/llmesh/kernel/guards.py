"""Service-specific checks run by the kernel interceptor on every call.

A guard (the gateway's authentication, authorization and rate limit) runs inside the
kernel's wrapped handler, after the request is decoded and validated and before the
handler, under the call's span, deadline and error mapping: refusing means raising a
domain error (:mod:`llmesh.kernel.errors`). Guards replace extra grpc interceptor
layers, each of which costs a coroutine and a handler lookup per call.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc


class Guard(Protocol):
    """A check every call of the methods it :meth:`applies` to goes through."""

    def applies(self, method: str) -> bool:
        """True when calls of ``method`` (``/pkg.Service/Method``) must pass :meth:`check`;
        asked once per method, not per call."""
        ...

    async def check(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Admit the call or raise a domain error (``Unauthenticated``, ...)."""
        ...
