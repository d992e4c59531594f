"""The ``llmesh`` command: ``llmesh serve <service>`` plus the subcommands that
each module in :data:`COMMAND_MODULES` registers.

Heavy imports happen inside subcommands, never here, so ``llmesh --help`` is fast
and a bad flag fails before anything loads.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# service name -> "module:function" of its entry ``(argv) -> exit code``. Each service
# package has ``app.py`` (flags, settings, run) and ``wiring.py`` (its parts on a host).
SERVICES: dict[str, str] = {
    "gateway": "llmesh_gateway.app:main",
    "registry": "llmesh_registry.app:main",
    "registrar": "llmesh_registry.app:registrar_main",
    "inference": "llmesh_inference.app:main",
    "memory": "llmesh_memory.app:main",
    "openai": "llmesh_openai.app:main",
}

# Modules under ``llmesh_cli`` that expose ``register(subparsers) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "models",
    "keys",
    "generate",
    "chat",
    "memory_cmds",
    "up",
    "status",
    "doctor",
)


def _serve(args: argparse.Namespace) -> int:
    module_name, _, function = SERVICES[args.service].partition(":")
    entry: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), function)
    return entry(args.service_args)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by ``main`` and the docs)."""
    parser = argparse.ArgumentParser(
        prog="llmesh",
        description="llmesh: a gRPC service mesh that serves local LLMs with memory.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser(
        "serve",
        help="run one service in the foreground",
        description="Run one llmesh service. Flags after the service name go to the service "
        "(`llmesh serve inference --help`).",
    )
    serve.add_argument("service", choices=sorted(SERVICES), help="which service to run")
    serve.add_argument("service_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"llmesh_cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmesh`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
