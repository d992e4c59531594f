"""How the CLI calls the mesh: the kernel's channel factory and per-call plumbing.

Every command that talks to the gateway (``generate``, ``chat``, ``remember``,
``recall``) or the registry (``status``)

- opens its channel with :func:`llmesh.kernel.channels.create_channel` (TLS from
  ``--ca-file``, message limits, keepalive; no transparent retries of generation);
- runs each operation in a kernel :func:`~llmesh.kernel.context.deadline_scope` of
  ``--timeout``, so every call gets what is left of it (less the kernel's margin), and
  the request id and ``traceparent`` in metadata, from the upstream client's
  :class:`~llmesh.kernel.upstream.OutboundCall`. A retry inside the same scope sends
  the same request id, so the gateway replays a Chat turn instead of generating it
  twice;
- prints a failure precisely (:func:`describe_error`), never a traceback.

The gateway's status reaches the user as the gateway sent it: unlike a service
relaying a peer's error to its own caller (:func:`llmesh.kernel.upstream.from_peer`),
the CLI is the last hop.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"
GATEWAY = "llmesh.v1.GatewayService"
# Costly to repeat: never retried by the channel (chat retries a turn itself, same key).
NON_IDEMPOTENT = ((GATEWAY, "Generate"), (GATEWAY, "GenerateStream"), (GATEWAY, "Chat"))


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--api-key``, ``--ca-file`` and ``--timeout``, shared by the commands."""
    parser.add_argument(
        "--target",
        default=os.environ.get("LLMESH_TARGET", DEFAULT_TARGET),
        help=f"gateway host:port (env LLMESH_TARGET, default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="API key or JWT (env LLMESH_API_KEY; prefer the env over the flag)",
    )
    parser.add_argument("--ca-file", type=Path, help="CA bundle: connect with TLS")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")


def api_key(args: argparse.Namespace) -> str:
    """The caller's key: ``--api-key`` or ``LLMESH_API_KEY`` (exit 2 when neither)."""
    key = args.api_key or os.environ.get("LLMESH_API_KEY", "")
    if not key:
        raise SystemExit("llmesh: no API key: set LLMESH_API_KEY or pass --api-key")
    return str(key)


def open_channel(target: str, *, ca_file: Path | None = None) -> grpc.aio.Channel:
    """A channel to ``target`` from the kernel's one channel factory."""
    from llmesh.kernel.channels import create_channel
    from llmesh.kernel.config import ClientTlsSettings

    tls = None
    if ca_file is not None:
        if not ca_file.is_file():
            raise SystemExit(f"llmesh: --ca-file {ca_file}: no such file")
        tls = ClientTlsSettings(ca_file=ca_file)
    return create_channel(target, tls=tls, non_idempotent=NON_IDEMPOTENT)


def gateway_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel to the gateway named by the client flags."""
    return open_channel(args.target, ca_file=args.ca_file)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting ``key``."""
    return (("authorization", f"Bearer {key}"),)


async def unary(method: Any, request: Any, *, metadata: Sequence[tuple[str, str]] = ()) -> Any:
    """Call a unary stub method inside the current deadline scope.

    Raises ``grpc.aio.AioRpcError`` as the peer sent it (print it with
    :func:`describe_error`).
    """
    from llmesh.kernel.upstream import OutboundCall, method_name

    call = OutboundCall(method_name(method))
    code = grpc.StatusCode.OK
    try:
        return await method(request, timeout=call.timeout, metadata=[*call.metadata, *metadata])
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        raise
    finally:
        call.finish(code)


async def stream(
    method: Any, request: Any, *, metadata: Sequence[tuple[str, str]] = ()
) -> AsyncIterator[Any]:
    """Iterate a server-streaming stub method inside the current deadline scope."""
    from llmesh.kernel.upstream import OutboundCall, method_name

    call = OutboundCall(method_name(method))
    responses = method(request, timeout=call.timeout, metadata=[*call.metadata, *metadata])
    code = grpc.StatusCode.OK
    try:
        async for message in responses:
            yield message
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        raise
    finally:
        responses.cancel()
        call.finish(code)


def describe_error(exc: grpc.aio.AioRpcError) -> str:
    """What went wrong, for a person: ``CODE: message``, then one line per detail
    (ErrorInfo reason and metadata, each BadRequest field violation, RetryInfo delay,
    QuotaFailure violations)."""
    from google.rpc import error_details_pb2

    from llmesh.kernel.upstream import status_details

    lines = [f"{exc.code().name}: {exc.details() or '(no message)'}"]
    status = status_details(exc)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            extra = "".join(f", {k}={v}" for k, v in sorted(info.metadata.items()))
            lines.append(f"  reason: {info.reason}{extra}")
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  field {v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            lines.append(f"  retry after {retry.retry_delay.ToMilliseconds() / 1000:.2f}s")
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            lines += [f"  quota {v.subject}: {v.description}" for v in quota.violations]
    return "\n".join(lines)
