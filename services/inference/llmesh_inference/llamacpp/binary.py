"""Where the optional ``llama-server`` binary is.

It is built once by ``make llama-server`` (libs/llmesh/tools/build_llama_server.sh)
from the llama.cpp source vendored in the pinned llama-cpp-python sdist, into a
cache directory outside the repository; nothing builds it implicitly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The sdist whose vendored llama.cpp ``make llama-server`` builds."""


def default_build_dir(env: Mapping[str, str] | None = None) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/llmesh/llama.cpp-<version>`` (or LLMESH_LLAMA_CPP_DIR)."""
    env = os.environ if env is None else env
    if env.get("LLMESH_LLAMA_CPP_DIR"):
        return Path(env["LLMESH_LLAMA_CPP_DIR"]).expanduser()
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "llmesh" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def find_llama_server(
    configured: Path | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """The binary: ``configured``, else ``make llama-server``'s, else one on PATH."""

    def runnable(path: Path) -> bool:
        return path.is_file() and os.access(path, os.X_OK)

    if configured is not None:  # an explicit path: that one or none, no guessing
        return configured if runnable(configured) else None
    built = default_build_dir(env) / "build" / "bin" / "llama-server"
    if runnable(built):
        return built
    found = shutil.which("llama-server")
    return Path(found) if found else None
