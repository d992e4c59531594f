"""The door's calls to the gateway, through the kernel's upstream call options.

Each call carries the HTTP caller's ``authorization`` header as gRPC metadata (the
gateway authenticates, authorizes, rate-limits and audits it exactly as a gRPC caller),
the remaining deadline of the HTTP request, its request id and trace context
(:class:`llmesh.kernel.upstream.OutboundCall`). A gateway failure becomes an
:class:`~llmesh_openai.errors.OpenAIError` by the one table in :mod:`llmesh_openai.errors`.
Leaving a stream early (a client that disconnected) cancels the gRPC call at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmesh.kernel.upstream import OutboundCall, method_name
from llmesh.v1 import gateway_pb2_grpc
from llmesh_openai.errors import ParamMap, from_gateway


class GatewayClient:
    """Stubs of the gateway's two services on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.api = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.admin = gateway_pb2_grpc.AdminServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    async def unary(
        self, method: Any, request: Any, *, authorization: str | None, params: ParamMap
    ) -> Any:
        """One unary call; failures raise ``OpenAIError``."""
        call = OutboundCall(method_name(method))
        code = grpc.StatusCode.OK
        try:
            return await method(
                request, timeout=call.timeout, metadata=_metadata(call, authorization)
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise from_gateway(exc, params) from None
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            call.finish(code)

    async def stream(
        self, method: Any, request: Any, *, authorization: str | None, params: ParamMap
    ) -> AsyncGenerator[Any]:
        """A server stream; failures (before or during it) raise ``OpenAIError``."""
        call = OutboundCall(method_name(method))
        rpc = method(request, timeout=call.timeout, metadata=_metadata(call, authorization))
        code = grpc.StatusCode.OK
        try:
            async for message in rpc:
                yield message
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise from_gateway(exc, params) from None
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            rpc.cancel()  # a consumer that stopped early (client gone) ends the call now
            call.finish(code)

    async def ready(self, timeout_s: float) -> bool:
        """Whether the gateway answers ``readiness`` SERVING within ``timeout_s``."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _metadata(call: OutboundCall, authorization: str | None) -> list[tuple[str, str]]:
    if authorization is None:
        return call.metadata
    return [*call.metadata, ("authorization", authorization)]
