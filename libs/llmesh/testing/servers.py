"""Throwaway Redis and PostgreSQL (+pgvector) servers for tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout_s: float = 15.0) -> None:
    """Poll until something accepts connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class RedisServer:
    """A ``redis-server`` child process on a free loopback port."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(*, port: int | None = None) -> RedisServer:
    """Start a non-persistent ``redis-server`` (the binary must be on PATH)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return RedisServer(process=process, port=port)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """``with redis_server() as r: r.url``."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class PostgresServer:
    """A pgserver-managed PostgreSQL 16 with pgvector in a temporary directory."""

    handle: Any
    directory: Path

    def dsn(self, database: str = "postgres") -> str:
        return str(self.handle.get_uri(database))

    def create_database(self, name: str) -> str:
        """Create an empty database (with the vector extension) and return its DSN."""
        self.handle.psql(f'CREATE DATABASE "{name}";')
        return self.dsn(name)

    def stop(self) -> None:
        self.handle.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start PostgreSQL + pgvector from the ``pgserver`` package in a temp dir."""
    import pgserver

    directory = Path(tempfile.mkdtemp(prefix="llmesh-pg-"))
    handle = pgserver.get_server(directory, cleanup_mode="stop")  # type: ignore[attr-defined]
    return PostgresServer(handle=handle, directory=directory)
