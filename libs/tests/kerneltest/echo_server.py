"""Echo servicer built with the kernel; also runnable as a process for signal tests.

``python echo_server.py --pb-dir DIR --port N`` serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from opentelemetry import trace

from llmesh.kernel.channels import create_channel
from llmesh.kernel.config import ServiceSettings, load_settings, service_settings_config
from llmesh.kernel.context import current_request, remaining_s
from llmesh.kernel.errors import invalid
from llmesh.kernel.logging import get_logger
from llmesh.kernel.server import ServiceHost, run_service
from llmesh.kernel.upstream import unary

log = get_logger("kerneltest.echo")
SERVICE = "kerneltest.v1.EchoService"


class EchoSettings(ServiceSettings):
    model_config = service_settings_config("echo")


def load_pb(pb_dir: Path) -> tuple[ModuleType, ModuleType]:
    if str(pb_dir) not in sys.path:
        sys.path.insert(0, str(pb_dir))
    return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")


def make_servicer(pb: ModuleType, pb_grpc: ModuleType) -> Any:
    class Echo(pb_grpc.EchoServiceServicer):  # type: ignore[misc,name-defined]
        async def Echo(self, request: Any, context: Any) -> Any:
            log.info("echo started", extra={"message_len": len(request.message)})
            print("ECHO-STARTED", flush=True)
            if request.fail_field:
                raise invalid(request.fail_field, "must be set to a non-empty value")
            if request.crash:
                raise RuntimeError("boom: secret internals")
            if request.sleep_ms:
                await asyncio.sleep(request.sleep_ms / 1000)
            left = remaining_s()
            span = trace.get_current_span().get_span_context()
            ctx = current_request()
            response = pb.EchoResponse(
                message=request.message,
                remaining_ms=-1 if left is None else left * 1000,
                trace_id=f"{span.trace_id:032x}",
                request_id=ctx.request_id if ctx else "",
            )
            if request.next_hop:
                async with create_channel(request.next_hop) as channel:
                    hop = await unary(
                        pb_grpc.EchoServiceStub(channel).Echo,
                        pb.EchoRequest(message=request.message),
                        what="calling the next hop",
                    )
                response.hop.CopyFrom(hop)
            return response

        async def EchoStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
            for index in range(request.count):
                if request.interval_ms:
                    await asyncio.sleep(request.interval_ms / 1000)
                yield pb.EchoStreamResponse(index=index)

    return Echo()


def setup_for(pb: ModuleType, pb_grpc: ModuleType) -> Callable[[ServiceHost], Any]:
    @asynccontextmanager
    async def setup(host: ServiceHost) -> AsyncIterator[None]:
        pb_grpc.add_EchoServiceServicer_to_server(make_servicer(pb, pb_grpc), host.server)
        await host.health.set_ready(True)
        yield

    return setup


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pb-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--metrics-port", type=int)
    args = parser.parse_args()
    pb, pb_grpc = load_pb(args.pb_dir)
    settings = load_settings(
        EchoSettings, port=args.port, grace_period_s=args.grace, metrics_port=args.metrics_port
    )
    return run_service(
        settings, service="echo", service_names=[SERVICE], setup=setup_for(pb, pb_grpc)
    )


if __name__ == "__main__":
    sys.exit(main())
