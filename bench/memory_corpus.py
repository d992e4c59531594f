"""Realistic synthetic memories and queries for the memory benchmark, plus a vector cache.

The texts read like what an assistant remembers about an engineering team: incidents,
deploys, preferences, meetings, customers. They are generated from templates with a
seeded RNG, so the same ``n`` always gives the same corpus. Vectors are computed once
with the real MiniLM encoder and cached under ``bench/results/cache/`` (git-ignored
size: 100k x 384 float32 = 154 MB; do not commit). Embedding runs with OpenBLAS preloaded
(``main`` re-executes itself): about 40 texts/s on one free core here, so the 100k corpus
takes ~40 min on an idle core and hours on a busy box; partial progress is kept.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

CACHE_DIR = Path(os.environ.get("LLMESH_BENCH_CACHE", "/tmp/llmesh-bench-cache"))

_SERVICES = (
    "payments",
    "checkout",
    "search",
    "billing",
    "auth",
    "notifications",
    "inventory",
    "shipping",
    "recommendations",
    "analytics",
    "ledger",
    "onboarding",
    "pricing",
    "catalog",
    "reporting",
    "messaging",
    "scheduler",
    "gateway",
    "profile",
    "fraud-detection",
)
_HOSTS = ("db-replica", "db-primary", "cache", "worker", "api", "edge", "queue", "batch")
_PEOPLE = (
    "Alice Moreau",
    "Bob Okafor",
    "Chen Wei",
    "Dana Kowalski",
    "Elif Yilmaz",
    "Farid Haddad",
    "Grace Lindqvist",
    "Hiro Tanaka",
    "Ines Duarte",
    "Jonas Becker",
    "Kavya Rao",
    "Liam O'Brien",
    "Maya Goldberg",
    "Nils Andersen",
    "Olga Petrova",
    "Pedro Alvarez",
    "Quinn Harper",
    "Rosa Jimenez",
    "Sam Whitfield",
    "Tara Nguyen",
    "Umar Siddiqui",
    "Vera Novak",
    "Wen Li",
    "Yusuf Demir",
    "Zoe Fischer",
)
_SYMPTOMS = (
    "started timing out",
    "returned intermittent 502 errors",
    "ran out of disk space",
    "leaked memory until the pod was killed",
    "showed replication lag above 30 seconds",
    "dropped connections under load",
    "served stale data from its cache",
    "spiked to full CPU",
    "failed health checks",
    "logged thousands of deadlocks",
    "rejected valid tokens",
    "duplicated outgoing emails",
)
_CAUSES = (
    "a missing index on the orders table",
    "an expired TLS certificate",
    "a connection pool that was too small",
    "a retry storm from mobile clients",
    "a misconfigured feature flag",
    "a slow DNS resolver",
    "a runaway cron job",
    "clock skew between nodes",
    "an unbounded in-memory queue",
    "a bad schema migration",
    "a noisy neighbour on the same host",
    "a regression in the JSON serializer",
)
_FIXES = (
    "rolled back the release",
    "added the index",
    "rotated the certificate",
    "doubled the pool size",
    "added jittered backoff",
    "disabled the flag",
    "moved the job to off-peak hours",
    "enabled NTP sync",
    "capped the queue",
    "reverted the migration",
    "moved the service to dedicated nodes",
    "pinned the old library",
)
_PREFS = (
    "prefers short written summaries over meetings",
    "likes dark mode in every tool",
    "wants code reviews within one working day",
    "is vegetarian and avoids mushrooms",
    "works from Lisbon and is online from 8 to 16 UTC",
    "prefers Python type hints everywhere",
    "asks for diagrams before big design changes",
    "likes tea, not coffee",
    "is allergic to peanuts",
    "prefers being paged only for customer-facing outages",
    "keeps meeting notes in the team wiki",
    "wants weekly status updates on Fridays",
)
_TOPICS = (
    "the database migration plan",
    "the Q3 hiring budget",
    "the new on-call rotation",
    "the incident review process",
    "moving logs to cheaper storage",
    "the API deprecation policy",
    "the customer churn dashboard",
    "the mobile release train",
    "the vendor contract renewal",
    "load testing before Black Friday",
    "the security audit findings",
    "the offsite agenda",
)
_DECISIONS = (
    "agreed to postpone it by two weeks",
    "decided to split the work across two teams",
    "approved the proposal with minor changes",
    "asked for a cost estimate first",
    "chose the managed option",
    "rejected it because of the latency risk",
    "wants a pilot with one customer",
    "assigned an owner and a deadline",
)
_CUSTOMERS = (
    "Acme Logistics",
    "Blue Harbor Bank",
    "Cobalt Health",
    "Delta Foods",
    "Evergreen Energy",
    "Fjord Telecom",
    "Granite Insurance",
    "Helix Biotech",
    "Ionic Retail",
    "Juniper Airlines",
)
_ASKS = (
    "asked for single sign-on with their identity provider",
    "reported slow exports of large reports",
    "wants invoices in euros",
    "needs data residency in the EU",
    "requested a higher API rate limit",
    "complained about missing email receipts",
    "asked for an audit log export",
    "wants a dedicated support contact",
    "reported a timezone bug in scheduled jobs",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


def _version(rng: random.Random) -> str:
    return f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 12)}"


def _host(rng: random.Random) -> str:
    return f"{rng.choice(_HOSTS)}-{rng.randint(1, 60):02d}"


def _one(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return (
            f"Incident on {rng.choice(_DAYS)}: {rng.choice(_SERVICES)} on {_host(rng)} "
            f"{rng.choice(_SYMPTOMS)} after the {_version(rng)} deploy; the cause was "
            f"{rng.choice(_CAUSES)} and we {rng.choice(_FIXES)}. Error code "
            f"E{rng.randint(1000, 9999)}."
        )
    if kind == 1:
        return f"{rng.choice(_PEOPLE)} {rng.choice(_PREFS)}, and {rng.choice(_PREFS)}."
    if kind == 2:
        return (
            f"In the {rng.choice(_DAYS)} meeting about {rng.choice(_TOPICS)}, "
            f"{rng.choice(_PEOPLE)} {rng.choice(_DECISIONS)}; follow-up owner is "
            f"{rng.choice(_PEOPLE)}."
        )
    if kind == 3:
        return (
            f"Customer {rng.choice(_CUSTOMERS)} {rng.choice(_ASKS)}; ticket "
            f"#{rng.randint(10000, 99999)} is handled by {rng.choice(_PEOPLE)}."
        )
    return (
        f"Release {_version(rng)} of {rng.choice(_SERVICES)} went out on {rng.choice(_DAYS)} "
        f"to {_host(rng)}; {rng.choice(_PEOPLE)} noted that it "
        f"{rng.choice(_SYMPTOMS)} in staging, so the team {rng.choice(_FIXES)}."
    )


def memories(n: int, *, seed: int = 7) -> list[str]:
    """``n`` distinct memory texts (deterministic for a given ``n`` and seed)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = _one(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


_QUESTIONS = (
    "What went wrong with {svc} after the last deploy?",
    "Which incident was caused by {cause}?",
    "What does {person} prefer?",
    "What did we decide about {topic}?",
    "What did {customer} ask for?",
    "Why did {host} have problems?",
    "Who handles the ticket from {customer}?",
    "How did we fix the outage where {svc} {symptom}?",
)


def queries(n: int, *, seed: int = 11) -> list[str]:
    """``n`` distinct natural questions over the same vocabulary as :func:`memories`.

    Distinct, because the memory service caches query vectors: a repeated query would
    skip the embedder and flatter the latency figures.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = _question(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _question(rng: random.Random) -> str:
    return str(
        rng.choice(_QUESTIONS).format(
            svc=rng.choice(_SERVICES),
            cause=rng.choice(_CAUSES),
            person=rng.choice(_PEOPLE),
            topic=rng.choice(_TOPICS),
            customer=rng.choice(_CUSTOMERS),
            host=_host(rng),
            symptom=rng.choice(_SYMPTOMS),
        )
    )


Embed = Callable[[Sequence[str]], "npt.NDArray[np.float32]"]


def minilm_embedder(*, max_batch_tokens: int = 4096) -> Embed:
    """Embed texts with the real MiniLM in MLX: :mod:`llmesh.embeddings`, the code the
    inference workers and the memory service's in-process embedder run.

    Fast only with OpenBLAS preloaded (:func:`with_openblas`); mlx-cpu's own reference
    BLAS is ~10x slower.
    """
    from llmesh.embeddings import MiniLMEmbedder

    model = MiniLMEmbedder.load(max_batch_tokens=max_batch_tokens)

    def embed(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors: npt.NDArray[np.float32] = model.embed(list(texts)).vectors
        return vectors

    return embed


def cached_vectors(
    texts: Sequence[str], name: str, embed: Embed | None = None, *, progress: bool = True
) -> npt.NDArray[np.float32]:
    """Vectors of ``texts``, computed once and kept in ``CACHE_DIR/<name>-<hash>.npy``.

    Computes in chunks and saves partial progress, so an interrupted run resumes.
    """
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    path = CACHE_DIR / f"{name}-{len(texts)}-{digest}.npy"
    if path.exists():
        loaded: npt.NDArray[np.float32] = np.load(path)
        return loaded
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = CACHE_DIR / f"{name}-{len(texts)}-{digest}.partial.npy"
    done = np.load(partial) if partial.exists() else np.zeros((0, 384), np.float32)
    embed = embed or minilm_embedder()
    chunk = 4096
    started = time.monotonic()
    while len(done) < len(texts):
        part = embed(texts[len(done) : len(done) + chunk])
        done = np.concatenate([done, part])
        np.save(partial, done)
        if progress:
            rate = len(done) / max(time.monotonic() - started, 1e-9)
            print(f"{name}: {len(done)}/{len(texts)} embedded ({rate:.0f}/s)", flush=True)
    np.save(path, done)
    partial.unlink(missing_ok=True)
    return done


def with_openblas(argv: Sequence[str], module: str) -> None:
    """Re-execute ``python -m <module> <argv>`` once with OpenBLAS preloaded for MLX
    (one thread: the box is shared); nothing when already done or not on Linux."""
    from llmesh.blas import reexec_with_openblas

    reexec_with_openblas(
        argv, module=module, threads=int(os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    )


def embed_latency(n: int) -> list[float]:
    """ms to embed each of ``n`` distinct queries, one at a time, through the memory
    service's in-process embedder (nothing cached; 20 other queries warm it up first)."""
    import asyncio

    from llmesh_memory.embedder import LocalEmbedder

    async def run() -> list[float]:
        embedder = LocalEmbedder(cache_size=0)
        await embedder.start()
        texts = queries(n + 20, seed=23)
        out = []
        try:
            for i, text in enumerate(texts):
                started = time.perf_counter()
                await embedder.embed([text])
                if i >= 20:
                    out.append((time.perf_counter() - started) * 1000)
        finally:
            await embedder.close()
        return out

    return asyncio.run(run())


def main() -> None:
    """Warm the cache: ``python -m bench.memory_corpus [N]``; or print the in-process
    query-embedding latencies as JSON: ``python -m bench.memory_corpus --embed-latency N``."""
    import json
    import sys

    with_openblas(sys.argv[1:], "bench.memory_corpus")
    if sys.argv[1:2] == ["--embed-latency"]:
        print(json.dumps([round(x, 3) for x in embed_latency(int(sys.argv[2]))]))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    embed = minilm_embedder()
    cached_vectors(queries(200), "queries", embed)
    cached_vectors(memories(n), "memories", embed)


if __name__ == "__main__":
    main()
