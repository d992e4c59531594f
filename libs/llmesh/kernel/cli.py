"""Shared parsing for ``llmesh serve <service>`` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llmesh.kernel.config import ConfigError, ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)


def service_parser(service: str, description: str) -> argparse.ArgumentParser:
    """A parser with the flags every service takes (``--config``, ``--host``, ``--port`` ...)."""
    parser = argparse.ArgumentParser(prog=f"llmesh serve {service}", description=description)
    parser.add_argument("--config", type=Path, help="YAML or JSON settings file")
    parser.add_argument("--host", help="address to bind (non-loopback requires TLS)")
    parser.add_argument("--port", type=int, help="port to bind (0 picks a free one)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus /metrics port")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", choices=["json", "text"], help="log line format")
    parser.add_argument("--data-dir", type=Path, help="directory for local state")
    return parser


def parse_service_args(
    cls: type[S],
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    extra: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> tuple[S, argparse.Namespace]:
    """Parse flags and load settings (defaults < file < env < flags); exit 2 on bad config."""
    args = parser.parse_args(list(argv))
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "data_dir": args.data_dir,
    }
    if extra is not None:
        overrides.update(extra(args))
    try:
        settings = load_settings(cls, args.config, **overrides)
    except ConfigError as exc:
        print(f"llmesh: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings, args
