"""``llmesh remember`` and ``llmesh recall``: long-term memory through the gateway.

Both call the gateway's public ``llmesh.v1.GatewayService`` (``Remember``/``Recall``)
with ``authorization: Bearer <key>`` from ``--api-key`` or ``LLMESH_API_KEY``; the
gateway derives the namespace from the key, so a key only ever sees its own memories.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from llmesh_cli.client import (
    add_client_flags,
    api_key,
    bearer,
    describe_error,
    gateway_channel,
    unary,
)

MODES = ("weighted", "rrf", "semantic", "keyword")


def _pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"llmesh: {flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _text(value: str) -> str:
    return sys.stdin.read().strip() if value == "-" else value


def register(subparsers: Any) -> None:
    """Add ``llmesh remember`` and ``llmesh recall``."""
    remember = subparsers.add_parser(
        "remember",
        help="store a long-term memory (through the gateway)",
        description="Store a memory in your namespace. The same text is stored once.",
    )
    remember.add_argument("text", help="the text to remember, or - for stdin")
    remember.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata pair (repeat)"
    )
    remember.add_argument("--ttl", type=int, default=0, help="lifetime in seconds (0: forever)")
    remember.add_argument("--idempotency-key", default="", help="makes retries safe")
    remember.add_argument("--json", action="store_true", help="print the reply as JSON")
    add_client_flags(remember)
    remember.set_defaults(func=_run_remember, timeout=30.0)

    recall = subparsers.add_parser(
        "recall",
        help="search your long-term memories (hybrid semantic + keyword)",
        description="Search your memories. Prints score, semantic and keyword parts, id, text.",
    )
    recall.add_argument("query", help="what to look for, or - for stdin")
    recall.add_argument("-k", type=int, default=5, help="hits to return (1..100)")
    recall.add_argument("--mode", choices=MODES, default="weighted", help="how scores combine")
    recall.add_argument("--semantic-weight", type=float, help="weighted mode (default 0.6)")
    recall.add_argument("--keyword-weight", type=float, help="weighted mode (default 0.4)")
    recall.add_argument("--min-score", type=float, default=0.0, help="drop weaker hits")
    recall.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only memories with this metadata pair (repeat)",
    )
    recall.add_argument("--json", action="store_true", help="print the reply as JSON")
    add_client_flags(recall)
    recall.set_defaults(func=_run_recall, timeout=30.0)


async def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    import grpc

    from llmesh.kernel.context import deadline_scope
    from llmesh.v1 import gateway_pb2_grpc

    metadata = bearer(api_key(args))
    async with gateway_channel(args) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            with deadline_scope(args.timeout, name=f"llmesh {method.lower()}"):
                return await unary(getattr(stub, method), request, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            print(f"llmesh {method.lower()}: {describe_error(exc)}", file=sys.stderr)
            return None


def _run_remember(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from llmesh.kernel.durations import duration
    from llmesh.v1 import common_pb2, gateway_pb2

    request = gateway_pb2.RememberRequest(
        memory=common_pb2.MemoryDraft(
            text=_text(args.text),
            metadata=common_pb2.Metadata(entries=_pairs(args.meta, "--meta")),
            ttl=duration(args.ttl),
            idempotency_key=args.idempotency_key,
        )
    )
    reply = asyncio.run(_call(args, "Remember", request))
    if reply is None:
        return 1
    if args.json:
        print(
            json.dumps(json_format.MessageToDict(reply, always_print_fields_with_no_presence=True))
        )
    else:
        notes = [
            n
            for n, on in (("duplicate", reply.duplicate), ("vector pending", not reply.embedded))
            if on
        ]
        print(reply.id + (f" ({', '.join(notes)})" if notes else ""))
    return 0


def _run_recall(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from llmesh.v1 import common_pb2, gateway_pb2

    options = common_pb2.RecallOptions(
        k=args.k,
        min_score=args.min_score,
        mode=getattr(common_pb2, f"FUSION_MODE_{args.mode.upper()}"),
        metadata_filter=common_pb2.Metadata(entries=_pairs(args.filter, "--filter")),
    )
    if args.semantic_weight is not None:
        options.semantic_weight = args.semantic_weight
    if args.keyword_weight is not None:
        options.keyword_weight = args.keyword_weight
    reply = asyncio.run(
        _call(args, "Recall", gateway_pb2.RecallRequest(query=_text(args.query), options=options))
    )
    if reply is None:
        return 1
    if args.json:
        print(
            json.dumps(json_format.MessageToDict(reply, always_print_fields_with_no_presence=True))
        )
        return 0
    if reply.degraded:
        print(f"(degraded: {reply.degraded_reason})", file=sys.stderr)
    if not reply.hits:
        print("no memories found", file=sys.stderr)
    for hit in reply.hits:
        print(
            f"{hit.score:.3f}  sem {hit.semantic_score:+.3f}  kw {hit.keyword_score:.3f}  "
            f"{hit.memory.id}  {hit.memory.text}"
        )
    return 0
