"""``llmesh generate``: one-shot generation through the gateway, streamed to stdout.

Also holds the small client helpers ``llmesh chat`` shares (target, key, errors).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_TARGET = "127.0.0.1:50051"


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--api-key`` and TLS flags shared by the client commands."""
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


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", help="model name (default: the mesh default)")
    parser.add_argument("--max-tokens", type=int, help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, help="0 = greedy, up to 2")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass (0, 1]")
    parser.add_argument("--seed", type=int, help="sampling seed (repeatable output)")
    parser.add_argument("--stop", action="append", default=[], help="stop sequence (repeat)")


def sampling_from(args: argparse.Namespace) -> Any:
    from llmesh.v1 import common_pb2

    sampling = common_pb2.SamplingParams(stop=args.stop)
    for name in ("max_tokens", "temperature", "top_p", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(sampling, name, value)
    return sampling


def api_key(args: argparse.Namespace) -> str:
    key = args.api_key or os.environ.get("LLMESH_API_KEY", "")
    if not key:
        raise SystemExit("llmesh: no API key: set LLMESH_API_KEY or pass --api-key")
    return str(key)


def open_channel(args: argparse.Namespace) -> Any:
    import grpc

    if args.ca_file is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=args.ca_file.read_bytes())
        return grpc.aio.secure_channel(args.target, creds)
    return grpc.aio.insecure_channel(args.target)


def describe_error(exc: Any) -> str:
    """One line: code, message and the useful rich details (field violations, retry)."""
    from google.rpc import error_details_pb2, status_pb2

    parts = [f"{exc.code().name}: {exc.details()}"]
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                parts += [f"  {v.field}: {v.description}" for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                parts.append(f"  retry after {retry.retry_delay.ToMilliseconds() / 1000:.2f}s")
    return "\n".join(parts)


def register(subparsers: Any) -> None:
    """Add ``llmesh generate``."""
    parser = subparsers.add_parser(
        "generate",
        help="one-shot generation through the gateway (streams to stdout)",
        description="Generate a completion through the gateway and stream it to stdout. "
        "The prompt is the argument, or stdin when it is '-' or missing.",
    )
    parser.add_argument("prompt", nargs="?", default="-", help="prompt text, or - for stdin")
    parser.add_argument("--session-id", default="", help="session id for worker affinity")
    parser.add_argument("--usage", action="store_true", help="print token usage to stderr")
    add_sampling_flags(parser)
    add_client_flags(parser)
    parser.set_defaults(func=_run)


async def _generate(args: argparse.Namespace, prompt: str) -> int:
    import grpc

    from llmesh.v1 import gateway_pb2, gateway_pb2_grpc

    metadata = (("authorization", f"Bearer {api_key(args)}"),)
    async with open_channel(args) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_pb2.GenerateStreamRequest(
            model=args.model,
            prompt=prompt,
            sampling=sampling_from(args),
            session_id=args.session_id,
        )
        try:
            async for chunk in stub.GenerateStream(
                request, metadata=metadata, timeout=args.timeout
            ):
                sys.stdout.write(chunk.delta.text)
                sys.stdout.flush()
                if chunk.WhichOneof("event") == "done" and args.usage:
                    usage = chunk.done.usage
                    print(
                        f"\n[{usage.prompt_tokens} prompt + {usage.completion_tokens} "
                        f"completion tokens, first token {usage.time_to_first_token_ms:.0f} ms]",
                        file=sys.stderr,
                    )
        except grpc.aio.AioRpcError as exc:
            print(f"\nllmesh generate: {describe_error(exc)}", file=sys.stderr)
            return 1
    sys.stdout.write("\n")
    return 0


def _run(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    return asyncio.run(_generate(args, prompt))
