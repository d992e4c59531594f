"""Fuzz every method of every service with random and mutated wire bytes.

The mesh of ``fuzz.harness`` (every service in this process on real parts, the gateway
with an admin key). Each method gets ``PER_METHOD`` payloads sent as raw bytes:
mutations of a valid request (bit flips, truncation, appended junk), invalid UTF-8 in
each string field, huge and overlong varints and out-of-range integers in each number
field, lengths that run past the end, wrong wire types, and plain random bytes. Nothing
may come back ``UNKNOWN`` or ``INTERNAL``; health is unchanged and a normal call still
works. Then bytes that are not gRPC at all (random, a broken HTTP/2 preface, frames of
junk) go straight to each server's TCP port: each server keeps serving.

The payloads are made by ``e2etest.fuzz_payloads``; ``test_fuzz_rules.py`` decodes the
same kind locally and holds the kernel's native rule checker to protovalidate.
``LLMESH_FUZZ_PER_METHOD`` sets the count (``make fuzz``: many more).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from e2etest.fuzz_payloads import payloads, seed_requests

from fuzz.harness import BAD_CODES, Target, health, mesh, normal_calls_work, send
from fuzz.report import record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# 500 per method in make test: the floor the contracts issue set (about a minute).
PER_METHOD = int(os.environ.get("LLMESH_FUZZ_PER_METHOD", "500"))
CONCURRENCY = 16
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _junk_streams(rng: random.Random, count: int) -> list[bytes]:
    """Byte streams that are not valid gRPC: random bytes, HTTP/1, a cut preface, the
    preface then random frames, a SETTINGS frame with a huge length, a HEADERS frame of
    junk."""
    out = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        PREFACE[:10],
        PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + rng.randbytes(64),
        PREFACE + b"\xff\xff\xff\x04\x00\x00\x00\x00\x00" + rng.randbytes(32),
        PREFACE
        + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        + b"\x00\x00\x20\x01\x05\x00\x00\x00\x01"
        + rng.randbytes(32),
    ]
    while len(out) < count:
        head = PREFACE if rng.random() < 0.5 else b""
        out.append(head + rng.randbytes(rng.randint(1, 4096)))
    return out


def _blast(address: str, data: bytes) -> None:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(0.5)
            sock.recv(4096)
        except OSError:
            pass  # the server may close on us: that is its right


async def test_fuzzed_payloads_never_unknown_or_internal(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rng = random.Random(14)
    seeds = seed_requests()
    async with mesh(tmp_path, tiny_model_dir) as running:
        health_before = {name: await health(a) for name, a in running.addresses.items()}
        channels = {a: grpc.aio.insecure_channel(a) for a in running.addresses.values()}
        codes: Counter[tuple[str, str]] = Counter()
        bad: list[tuple[str, str, bytes]] = []
        sem = asyncio.Semaphore(CONCURRENCY)
        started = time.monotonic()

        async def one(target: Target, payload: bytes) -> None:
            async with sem:
                code = await send(channels[target.address], target, payload)
            codes[(target.path, code.name)] += 1
            if code in BAD_CODES:
                bad.append((target.path, code.name, payload))

        jobs = []
        for target in running.targets:
            request_type = target.method.input_type
            seed = seeds.get(request_type.full_name, b"")
            for payload in payloads(request_type, seed, rng, PER_METHOD):  # type: ignore[arg-type]
                jobs.append(one(target, payload))
        await asyncio.gather(*jobs)
        elapsed = time.monotonic() - started
        # Not gRPC at all, straight to each server's port.
        junk = _junk_streams(rng, max(8, PER_METHOD // 10))
        for address in running.addresses.values():
            await asyncio.gather(*(asyncio.to_thread(_blast, address, data) for data in junk))
        try:
            health_after = {name: await health(a) for name, a in running.addresses.items()}
            await asyncio.to_thread(normal_calls_work, running)
        finally:
            for channel in channels.values():
                await channel.close(None)
    sent = sum(codes.values())
    print(f"fuzz: {sent} payloads to {len(running.targets)} methods in {elapsed:.1f}s")
    for (path, code), n in sorted(codes.items()):
        print(f"  {path} {code} {n}")
    record(
        "raw_bytes",
        {
            "per_method": PER_METHOD,
            "methods": len(running.targets),
            "payloads": sent,
            "junk_streams_per_server": len(junk),
            "seconds": round(elapsed, 1),
            "codes": {f"{path} {code}": n for (path, code), n in sorted(codes.items())},
            "unknown_or_internal": len(bad),
        },
    )
    per_method = Counter(path for path, _code in codes.elements())
    assert len(per_method) == len(running.targets)
    assert min(per_method.values()) >= PER_METHOD  # every method got its full share
    assert not bad, bad[:10]
    assert health_after == health_before
