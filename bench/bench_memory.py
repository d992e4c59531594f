"""Memory service benchmark: Recall latency at 10k/100k memories, SQLite and PostgreSQL.

Measured in one run, per backend and size:

* ``recall_rpc``: the ``MemoryService.Recall`` RPC end to end against a real
  ``llmesh serve memory`` process embedding the query in-process (``local_embedder``,
  MiniLM in MLX with OpenBLAS), keyword work overlapped with the embedding, vector
  search, fusion: p50/p95/p99 in ms;
* ``recall_rpc_worker``: the same with the query embedded by a real ``llmesh serve
  inference`` worker over gRPC (the configuration without ``local_embedder``);
* ``search``: the same searches in-process with the query vectors precomputed
  (store search + scoring + fusion, no RPC, no embedding), to show where time goes;
* ``embed_rpc``: the query-embedding RPC alone; ``embed_local``: one query embedded
  in this process (what ``local_embedder`` costs a Recall);
* ``vector_recall_at_10``: overlap of the vector candidates' top 10 with exact
  brute-force top 10 (NumPy over the same vectors), averaged over the queries;
* load and index build times.

Memory texts come from :mod:`bench.memory_corpus` and are embedded once with the real
MiniLM (cached on disk; ``python -m bench.memory_corpus 100000`` warms the cache, with
OpenBLAS preloaded for MLX in its own process).

    .venv/bin/python -m bench.bench_memory --sizes 10000 100000 --backends sqlite postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.memory_corpus import CACHE_DIR, cached_vectors, memories, queries

if TYPE_CHECKING:
    from llmesh_cli.supervisor.plan import PlanOptions

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
NS = "bench"


def _percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "mean_ms": round(statistics.fmean(ordered), 2),
        "n": len(ordered),
    }


def corpus_vectors(n: int, *, pad: bool = False) -> tuple[np.ndarray, int]:
    """The first ``n`` memory vectors and how many of them are real MiniLM vectors.

    Reads the 100k cache (complete or partial); what is missing is embedded first
    (``bench.memory_corpus``), unless ``pad``: then rows beyond the real ones are real
    vectors of earlier rows plus small seeded noise (renormalised): the size is right for
    timing, the distribution stays MiniLM-like; the run records how many rows are real.
    """
    real = np.zeros((0, 384), np.float32)
    for path in sorted(CACHE_DIR.glob("memories-100000-*.npy")):
        data = np.load(path, mmap_mode="r")
        if len(data) > len(real):
            real = np.asarray(data[: min(n, len(data))], dtype=np.float32)
    if len(real) >= n:
        return real[:n], n
    if not pad or len(real) == 0:
        if n > 100_000:
            raise SystemExit("at most 100000 memories are generated")
        # The first run on a machine embeds the corpus (resumable, progress per chunk),
        # in a child with OpenBLAS preloaded: this process must not preload it (its
        # children, PostgreSQL's initdb among them, cannot load it).
        print(f"{len(real)} of {n} memory vectors cached; embedding the corpus", flush=True)
        subprocess.run(
            [sys.executable, "-m", "bench.memory_corpus", "100000"],
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        return corpus_vectors(n, pad=pad)
    rng = np.random.default_rng(3)
    source = real[rng.integers(0, len(real), n - len(real))]
    noisy = source + rng.normal(0, 0.02, source.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return np.concatenate([real, noisy]).astype(np.float32), len(real)


async def load_store(store: Any, texts: Sequence[str], vectors: np.ndarray) -> float:
    from llmesh_memory.store.base import NewMemory
    from llmesh_memory.text import dedupe_key, index_terms

    started = time.perf_counter()
    now = time.time()
    batch = 1000
    for start in range(0, len(texts), batch):
        chunk = [
            NewMemory(
                text=t,
                dedupe_key=dedupe_key(NS, t),
                metadata={"kind": "bench"},
                terms=index_terms(t),
                vector=vectors[start + i],
                expires_at=None,
            )
            for i, t in enumerate(texts[start : start + batch])
        ]
        await store.insert_memories(NS, chunk, now=now)
    return time.perf_counter() - started


async def search_only(store: Any, query_texts: Sequence[str], qvecs: np.ndarray) -> list[float]:
    from llmesh_memory.scoring import Fusion, Scored, fuse, keyword_score
    from llmesh_memory.store.base import SearchQuery
    from llmesh_memory.text import query_terms

    out = []
    for text, vector in zip(query_texts, qvecs, strict=True):
        started = time.perf_counter()
        terms = query_terms(text)
        # 50: the service's default candidate_pool (candidates from each search).
        result = await store.search(NS, SearchQuery(vector, terms, 50), now=time.time())
        scored = [
            Scored(c.memory.id, c.semantic, keyword_score(terms, c.terms, result.stats))
            for c in result.candidates
        ]
        fuse(scored, mode=Fusion.WEIGHTED)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def recall_rpc(
    target: str, query_texts: Sequence[str], warmup_texts: Sequence[str]
) -> list[float]:
    import grpc

    from llmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc

    out = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        # Warm-up queries differ from the measured ones (the service caches query vectors).
        warmup = len(warmup_texts)
        for i, text in enumerate([*warmup_texts, *query_texts]):
            started = time.perf_counter()
            reply = await stub.Recall(
                memory_pb2.MemoryServiceRecallRequest(
                    namespace=NS, query=text, options=common_pb2.RecallOptions(k=10)
                ),
                timeout=30,
            )
            elapsed = (time.perf_counter() - started) * 1000
            if reply.degraded:
                raise RuntimeError(f"recall degraded: {reply.degraded_reason}")
            if i >= warmup:
                out.append(elapsed)
    return out


def embed_local(nq: int) -> list[float]:
    """One query at a time through the in-process embedder (ms each; nothing cached).

    In a child process (``bench.memory_corpus --embed-latency``) with OpenBLAS
    preloaded, as the memory service runs it; this process stays unpreloaded, since
    its children (PostgreSQL's initdb) cannot load a preloaded OpenBLAS.
    """
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory_corpus", "--embed-latency", str(nq)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    samples: list[float] = json.loads(out.strip().splitlines()[-1])
    return samples


async def embed_rpc(target: str, query_texts: Sequence[str]) -> list[float]:
    import grpc

    from llmesh.v1 import inference_pb2, inference_pb2_grpc

    out = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for text in query_texts:
            started = time.perf_counter()
            await stub.Embed(inference_pb2.InferenceServiceEmbedRequest(texts=[text]), timeout=30)
            out.append((time.perf_counter() - started) * 1000)
    return out


def exact_top10(matrix: np.ndarray, qvecs: np.ndarray) -> list[set[int]]:
    sims = qvecs @ matrix.T
    top = np.argpartition(-sims, 10, axis=1)[:, :10]
    return [set(map(int, row)) for row in top]


async def pg_vector_recall(
    dsn: str, qvecs: np.ndarray, exact: list[set[int]], id_to_row: dict[str, int], ef_search: int
) -> tuple[float, dict[str, float]]:
    """HNSW top-10 overlap with the exact top-10, and the latency of that query alone."""
    import psycopg
    from psycopg.types import TypeInfo

    from llmesh_memory.store.postgres import VectorDumper as _VectorDumper

    hits = 0
    times = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        info = await TypeInfo.fetch(conn, "vector")
        assert info is not None
        dumper = type("D", (_VectorDumper,), {"oid": info.oid})
        conn.adapters.register_dumper(np.ndarray, dumper)
        await conn.execute(f"SET hnsw.ef_search = {ef_search}")
        for q, truth in zip(qvecs, exact, strict=True):
            started = time.perf_counter()
            cur = await conn.execute(
                "SELECT id FROM memories WHERE namespace = %s ORDER BY embedding <=> %s LIMIT 10",
                (NS, q),
            )
            rows = await cur.fetchall()
            times.append((time.perf_counter() - started) * 1000)
            found = {id_to_row[r[0]] for r in rows}
            hits += len(found & truth)
    return hits / (10 * len(exact)), _percentiles(times)


async def sqlite_vector_recall(
    store: Any, qvecs: np.ndarray, exact: list[set[int]], id_to_row: dict[str, int]
) -> float:
    from llmesh_memory.store.base import SearchQuery

    hits = 0
    for q, truth in zip(qvecs, exact, strict=True):
        result = await store.search(NS, SearchQuery(q, [], 10), now=time.time())
        found = {id_to_row[c.memory.id] for c in result.candidates}
        hits += len(found & truth)
    return hits / (10 * len(exact))


async def run_one(
    backend: str,
    n: int,
    *,
    mesh: PlanOptions,
    pg: Any,
    workdir: Path,
    nq: int,
    ef_search: int,
    hnsw_m: int = 16,
    ef_construction: int = 200,
    pad: bool = False,
) -> dict[str, Any]:
    from llmesh_cli.supervisor.mesh import LocalMesh
    from llmesh_cli.supervisor.plan import build_plan
    from llmesh_memory.store.postgres import PostgresStore
    from llmesh_memory.store.sqlite import SqliteStore

    texts = memories(100_000)[:n]
    vectors, real = corpus_vectors(n, pad=pad)
    query_texts = queries(nq)
    qvecs = cached_vectors(queries(200), "queries")[:nq]
    out: dict[str, Any] = {
        "backend": backend,
        "memories": n,
        "queries": nq,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "real_minilm_vectors": real,
    }
    store: Any
    dsn = ""
    if backend == "postgres":
        dsn = pg.create_database(f"bench_{n}_{int(time.time())}")
        store = PostgresStore(dsn, ef_search=ef_search)
        await store.start()
        import psycopg

        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("DROP INDEX memories_embedding")
        out["load_s"] = round(await load_store(store, texts, vectors), 1)
        started = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            await conn.execute(
                "CREATE INDEX memories_embedding ON memories USING hnsw "
                f"(embedding vector_cosine_ops) WITH (m = {int(hnsw_m)}, "
                f"ef_construction = {int(ef_construction)})"
            )
            await conn.execute("ANALYZE memories")
        out["hnsw_build_s"] = round(time.perf_counter() - started, 1)
        out["hnsw"] = {"m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
    else:
        path = workdir / f"memory-{n}.db"
        path.unlink(missing_ok=True)
        store = SqliteStore(path)
        await store.start()
        out["load_s"] = round(await load_store(store, texts, vectors), 1)
    # Vector part vs exact brute force.
    rows = await _id_rows(store, backend, dsn, texts)
    exact = exact_top10(vectors, qvecs)
    if backend == "postgres":
        sweep = []
        # The breadth the service uses for this namespace (scaled by its size).
        from llmesh_memory.store.postgres.search import VectorPlan

        service_ef = VectorPlan(ef_search=ef_search).hnsw_ef(n, n, False, 50) or ef_search
        out["hnsw"]["service_ef_search"] = service_ef
        for ef in sorted({40, 60, 100, 200, 400, ef_search, service_ef}):
            recall, timing = await pg_vector_recall(dsn, qvecs, exact, rows, ef)
            sweep.append({"ef_search": ef, "recall_at_10": round(recall, 4), "top10_sql": timing})
        out["hnsw_sweep"] = sweep
        out["vector_recall_at_10"] = next(
            e["recall_at_10"] for e in sweep if e["ef_search"] == service_ef
        )
    else:
        out["vector_recall_at_10"] = round(await sqlite_vector_recall(store, qvecs, exact, rows), 4)
    await search_only(store, query_texts[:10], qvecs[:10])  # warm caches
    out["search"] = _percentiles(await search_only(store, query_texts, qvecs))
    await store.close()
    # The real service, end to end: the memory child of the mesh plan, on this store,
    # embedding in-process (local_embedder) and then through the inference worker.
    args = ["--store", backend]
    env = {"LLMESH_MEMORY_LOG_LEVEL": "WARNING"}
    if backend == "postgres":
        dsn_file = workdir / "dsn"
        dsn_file.write_text(dsn)
        args += ["--postgres-dsn-file", str(dsn_file)]
        env["LLMESH_MEMORY_HNSW_EF_SEARCH"] = str(ef_search)
    else:
        args += ["--sqlite-path", str(workdir / f"memory-{n}.db")]
    for key, local in (("recall_rpc", True), ("recall_rpc_worker", False)):
        service_env = {**env, "LLMESH_MEMORY_LOCAL_EMBEDDER": str(local).lower()}
        plan = build_plan(
            replace(mesh, args={**mesh.args, "memory": args}, env={"memory": service_env})
        )
        with LocalMesh([s for s in plan if s.name == "memory"], home=workdir) as server:
            server.start()
            out[key] = _percentiles(
                await recall_rpc(server.address("memory"), query_texts, queries(nq + 20)[nq:])
            )
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


async def _id_rows(store: Any, backend: str, dsn: str, texts: Sequence[str]) -> dict[str, int]:
    """Memory id -> row number in ``texts`` (for comparing with the exact search)."""
    by_text = {t: i for i, t in enumerate(texts)}
    if backend == "postgres":
        import psycopg

        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute("SELECT id, text FROM memories")
            return {r[0]: by_text[r[1]] for r in await cur.fetchall()}
    import sqlite3

    with sqlite3.connect(store.path) as conn:
        return {r[0]: by_text[r[1]] for r in conn.execute("SELECT id, text FROM memories")}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from llmesh.testing.servers import start_postgres
    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan

    workdir = Path(tempfile.mkdtemp(prefix="llmesh-bench-memory-"))
    # The plan of `llmesh up`: an inference worker with no text model (embeddings only)
    # and a memory service embedding through it (started per run by run_one).
    mesh = mesh_options(
        workdir,
        models_dir=workdir / "models",
        default_model="",
        services=("inference", "memory"),
        # One BLAS thread: on a shared 2-core box extra threads spin (docs: Embeddings).
        args={"inference": ["--blas-threads", "1"]},
    )
    inference = LocalMesh([s for s in build_plan(mesh) if s.name == "inference"], home=workdir)
    pg = start_postgres() if "postgres" in args.backends else None
    results: dict[str, Any] = {
        "benchmark": "memory",
        "machine": f"{os.cpu_count()} cpus",
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": [],
    }
    try:
        inference.start()
        target = inference.address("inference")
        await embed_rpc(target, queries(20))
        results["embed_rpc"] = _percentiles(await embed_rpc(target, queries(args.queries)))
        results["embed_local"] = _percentiles(embed_local(args.queries))
        for n in args.sizes:
            for backend in args.backends:
                print(f"memory bench: {backend} at {n} memories ...", flush=True)
                run = await run_one(
                    backend,
                    n,
                    mesh=mesh,
                    pg=pg,
                    workdir=workdir,
                    nq=args.queries,
                    ef_search=args.ef_search,
                    hnsw_m=args.hnsw_m,
                    ef_construction=args.ef_construction,
                    pad=args.pad,
                )
                print(json.dumps(run), flush=True)
                results["runs"].append(run)
    finally:
        inference.close()
        if pg is not None:
            pg.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=200)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)  # as migration 0003
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--pad",
        action="store_true",
        help="fill missing cached vectors with perturbed real ones (timing)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep runs of other sizes/backends already in --out"
    )
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        done = {(r["backend"], r["memories"]) for r in results["runs"]}
        kept = [r for r in old.get("runs", []) if (r["backend"], r["memories"]) not in done]
        results["runs"] = sorted(
            kept + results["runs"], key=lambda r: (r["memories"], r["backend"])
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
