"""``llmesh chat``: an interactive, memory-augmented chat through the gateway.

Each turn is sent once with its own idempotency key; a turn that failed before any
text arrived is retried with the same key and request id (one kernel deadline scope of
``--timeout`` per turn), so it is stored in the session once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

from llmesh_cli.client import (
    add_client_flags,
    api_key,
    bearer,
    describe_error,
    gateway_channel,
    stream,
    unary,
)
from llmesh_cli.generate import add_sampling_flags, sampling_from

HELP = "commands: /quit, /session (show the session), /new (start a new session)"


def register(subparsers: Any) -> None:
    """Add ``llmesh chat``."""
    parser = subparsers.add_parser(
        "chat",
        help="interactive chat with memory through the gateway",
        description="Chat through the gateway. Turns are stored in a session (resume it "
        "with --session-id) and relevant long-term memories are recalled. " + HELP,
    )
    parser.add_argument("--session-id", help="session to continue (default: a new one)")
    parser.add_argument("--system", default="", help="system prompt")
    parser.add_argument("--recall-k", type=int, default=5, help="memories to recall (0: no recall)")
    parser.add_argument("--history", type=int, default=20, help="recent messages to include")
    parser.add_argument("--remember", action="store_true", help="store each message as memory")
    add_sampling_flags(parser)
    add_client_flags(parser)
    parser.set_defaults(func=_run)


async def _turn(stub: Any, request: Any, metadata: Any, deadline_s: float) -> int:
    """Stream one turn to stdout; returns the new session version."""
    from llmesh.kernel.context import deadline_scope

    with deadline_scope(deadline_s, name="llmesh chat"):
        return await _send_turn(stub, request, metadata)


async def _send_turn(stub: Any, request: Any, metadata: Any) -> int:
    import grpc

    for attempt in range(2):
        wrote = False
        try:
            version = 0
            async for chunk in stream(stub.Chat, request, metadata=metadata):
                if chunk.delta.text:
                    wrote = True
                    sys.stdout.write(chunk.delta.text)
                    sys.stdout.flush()
                if chunk.WhichOneof("event") == "done":
                    version = int(chunk.done.session_version)
            sys.stdout.write("\n")
            return version
        except grpc.aio.AioRpcError as exc:
            if wrote or attempt or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    return 0


async def _chat(args: argparse.Namespace) -> int:
    import grpc

    from llmesh.kernel.context import deadline_scope
    from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    metadata = bearer(api_key(args))
    session_id = args.session_id or f"cli-{uuid.uuid4().hex[:12]}"
    print(f"session {session_id} ({HELP})", file=sys.stderr)
    async with gateway_channel(args) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        loop = asyncio.get_running_loop()
        while True:
            try:
                line = await loop.run_in_executor(None, _read_line)
            except EOFError:
                print(file=sys.stderr)
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                return 0
            if text == "/new":
                session_id = f"cli-{uuid.uuid4().hex[:12]}"
                print(f"session {session_id}", file=sys.stderr)
                continue
            if text == "/session":
                try:
                    with deadline_scope(args.timeout, name="llmesh chat"):
                        reply = await unary(
                            stub.GetSession,
                            gateway_pb2.GetSessionRequest(session_id=session_id),
                            metadata=metadata,
                        )
                except grpc.aio.AioRpcError as exc:
                    print(describe_error(exc), file=sys.stderr)
                    continue
                for message in reply.messages:
                    role = common_pb2.ChatRole.Name(message.role).removeprefix("CHAT_ROLE_")
                    print(f"{role.lower()}: {message.content}")
                continue
            request = gateway_pb2.ChatRequest(
                session_id=session_id,
                message=text,
                model=args.model,
                recall=common_pb2.RecallOptions(k=max(0, args.recall_k)),
                disable_recall=args.recall_k <= 0,
                sampling=sampling_from(args),
                system_prompt=args.system,
                history_limit=args.history,
                idempotency_key=uuid.uuid4().hex,
                remember_message=args.remember,
            )
            try:
                await _turn(stub, request, metadata, args.timeout)
            except grpc.aio.AioRpcError as exc:
                print(f"\n{describe_error(exc)}", file=sys.stderr)
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    return 1


def _read_line() -> str:
    return input("you> ")


def _run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_chat(args))
    except KeyboardInterrupt:
        return 130
