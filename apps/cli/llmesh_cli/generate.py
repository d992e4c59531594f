"""``llmesh generate``: one-shot generation through the gateway, streamed to stdout.

Also holds the sampling flags ``llmesh chat`` shares; the client plumbing (channel,
deadline, errors) is :mod:`llmesh_cli.client`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from llmesh_cli.client import (
    add_client_flags,
    api_key,
    bearer,
    describe_error,
    gateway_channel,
    stream,
)


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

    from llmesh.kernel.context import deadline_scope
    from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    metadata = bearer(api_key(args))
    async with gateway_channel(args) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_pb2.GenerateStreamRequest(
            input=common_pb2.GenerationInput(
                model=args.model, prompt=prompt, sampling=sampling_from(args)
            ),
            session_id=args.session_id,
        )
        try:
            with deadline_scope(args.timeout, name="llmesh generate"):
                async for chunk in stream(stub.GenerateStream, request, metadata=metadata):
                    sys.stdout.write(chunk.delta.text)
                    sys.stdout.flush()
                    if chunk.WhichOneof("event") == "done" and args.usage:
                        usage = chunk.done.usage
                        print(
                            f"\n[{usage.prompt_tokens} prompt + {usage.completion_tokens} "
                            f"completion tokens, first token "
                            f"{usage.time_to_first_token_ms:.0f} ms]",
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
