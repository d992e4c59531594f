"""Retrieval quality of memory ``Recall`` on the labelled sets in ``bench/recall_eval/``.

Three sets, written independently (``dataset``: ops, family, releases, recipes;
``tuning``: procurement, lab notebook, class notes; ``heldout``: vet practice, travel,
household -- never used to tune the ranking, reported separately). For every query
(paraphrase, exact-token and mixed kinds) it asks for the top 10 in each fusion mode --
semantic-only, keyword-only, weighted hybrid (the service's default) and
reciprocal-rank fusion -- and reports hit@1, recall@5 and MRR per set and kind, and
whether the default is at least as good as each half on every kind and better overall.

The default run goes through the REAL services: an inference worker started the
ordinary way (the inference child of the ``llmesh up`` plan, embeddings only, optimized
BLAS where the entry point arranges it) computes the real all-MiniLM-L6-v2 vectors, and the memory
service runs in-process on a loopback port with a throwaway SQLite store per set; every
memory is stored with ``Remember`` and every query is a ``Recall`` RPC.
``--vectors committed`` instead serves the committed vectors of the same model
(``bench/recall_eval/vectors/``, checksummed) to the same service, with no worker: a
quick check after a ranking change. Writes ``bench/results/recall_quality.json`` and
prints a table per set. Usage::

    python -m bench.bench_recall_quality [--embedder HOST:PORT] [--vectors committed]
        [--sets dataset tuning heldout] [--k 10]

``evaluate`` / ``evaluate_async`` take any ``recall(namespace, query, mode) -> ids``
function, so a store or fusion change can be scored without the services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.recall_eval.dataset import KINDS, Dataset
from bench.recall_eval.metrics import Scores, score_by_kind
from bench.recall_eval.vectors import SETS, dataset_of, load_vectors

RESULTS = Path(__file__).resolve().parent / "results" / "recall_quality.json"
MODES = ("semantic", "keyword", "weighted", "rrf")
COMPONENTS = ("semantic", "keyword")
DEFAULT_HYBRID = "weighted"

RecallFn = Callable[[str, str, str], Sequence[str]]
AsyncRecallFn = Callable[[str, str, str], Awaitable[Sequence[str]]]
Rankings = dict[str, dict[str, list[str]]]  # mode -> query id -> ranked dataset ids


def evaluate(dataset: Dataset, recall: RecallFn, modes: Sequence[str] = MODES) -> Rankings:
    """Rankings of every query in every mode from a synchronous ``recall``."""
    return {
        mode: {q.id: list(recall(q.namespace, q.text, mode)) for q in dataset.queries}
        for mode in modes
    }


async def evaluate_async(
    dataset: Dataset, recall: AsyncRecallFn, modes: Sequence[str] = MODES
) -> Rankings:
    """Rankings of every query in every mode from an async ``recall`` (one call at a time)."""
    out: Rankings = {}
    for mode in modes:
        out[mode] = {q.id: list(await recall(q.namespace, q.text, mode)) for q in dataset.queries}
    return out


def summarize(dataset: Dataset, rankings: Rankings) -> dict[str, dict[str, Scores]]:
    """mode -> kind (and ``all``) -> scores."""
    return {mode: score_by_kind(dataset, ranked) for mode, ranked in rankings.items()}


def hybrid_checks(
    scores: Mapping[str, Mapping[str, Scores]], hybrid: str = DEFAULT_HYBRID
) -> dict[str, bool]:
    """The issue's bar for the default hybrid, on hit@1 and on recall@5.

    ``*_ge_best_component_per_kind``: on every kind at least the better of semantic and
    keyword; ``hit_at_1_beats_both_overall``: over all queries strictly better than each;
    ``recall_at_5_ge_both_overall``: at least as good as each (semantic-only already
    finds nearly every answer in its top 5, so a tie there is common).
    """
    out: dict[str, bool] = {}
    if hybrid not in scores or not all(c in scores for c in COMPONENTS):
        return out
    for metric in ("hit_at_1", "recall_at_5"):

        def value(mode: str, kind: str, metric: str = metric) -> float:
            return float(getattr(scores[mode][kind], metric))

        out[f"{metric}_ge_best_component_per_kind"] = all(
            value(hybrid, kind) >= max(value(c, kind) for c in COMPONENTS) for kind in KINDS
        )
        if metric == "hit_at_1":
            out["hit_at_1_beats_both_overall"] = all(
                value(hybrid, "all") > value(c, "all") for c in COMPONENTS
            )
        else:
            out["recall_at_5_ge_both_overall"] = all(
                value(hybrid, "all") >= value(c, "all") for c in COMPONENTS
            )
    return out


def misses(dataset: Dataset, rankings: Rankings) -> dict[str, list[dict[str, Any]]]:
    """Per mode, the queries whose top hit is not relevant, with the top 3 returned."""
    out: dict[str, list[dict[str, Any]]] = {}
    for mode, ranked in rankings.items():
        out[mode] = [
            {"query": q.id, "kind": q.kind, "relevant": list(q.relevant), "top3": ranked[q.id][:3]}
            for q in dataset.queries
            if not ranked[q.id][:1] or ranked[q.id][0] not in q.relevant
        ]
    return out


def format_table(scores: Mapping[str, Mapping[str, Scores]]) -> str:
    """hit@1 / recall@5 per kind (columns) and mode (rows)."""
    kinds = [*KINDS, "all"]
    head = f"{'mode':<10}" + "".join(f"{kind + ' h@1/r@5':>22}" for kind in kinds)
    lines = [head, "-" * len(head)]
    for mode, by_kind in scores.items():
        cells = "".join(
            f"{f'{by_kind[k].hit_at_1:.2f} / {by_kind[k].recall_at_5:.2f}':>22}" for k in kinds
        )
        lines.append(f"{mode:<10}{cells}")
    return "\n".join(lines)


# ----- the real services -------------------------------------------------------------


@contextmanager
def inference_worker(home: Path) -> Iterator[str]:
    """The inference child of the ``llmesh up`` plan with no generation model (embeddings
    only), on a free loopback port, its log in ``home/logs``; yield ``host:port`` once
    ``Embed`` answers; stop it on exit."""
    import grpc

    from llmesh.v1 import inference_pb2, inference_pb2_grpc
    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan

    options = mesh_options(
        home,
        models_dir=home / "models",
        default_model="",
        services=("inference",),
        log_level="WARNING",
        # One OpenBLAS thread: faster and steadier on a CPU shared with others.
        args={"inference": ["--data-dir", str(home / "inference"), "--blas-threads", "1"]},
    )
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMESH_")}
    with LocalMesh(build_plan(options), home=home, base_env=base_env) as mesh:
        mesh.start()
        target = mesh.address("inference")
        with grpc.insecure_channel(target) as channel:
            # The first Embed loads the embedding model.
            inference_pb2_grpc.InferenceServiceStub(channel).Embed(
                inference_pb2.InferenceServiceEmbedRequest(texts=["warm-up"]), timeout=300
            )
        yield target


async def run_service(dataset: Dataset, embedder_target: str, *, k: int) -> dict[str, Any]:
    """Store the set through ``Remember`` and rank every query through ``Recall``."""
    import grpc

    from llmesh.kernel.config import load_settings
    from llmesh.testing.inprocess import serving
    from llmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc
    from llmesh_memory.settings import MemorySettings
    from llmesh_memory.wiring import SERVICE_NAMES, wire

    fusion = {
        "semantic": common_pb2.FUSION_MODE_SEMANTIC,
        "keyword": common_pb2.FUSION_MODE_KEYWORD,
        "weighted": common_pb2.FUSION_MODE_WEIGHTED,
        "rrf": common_pb2.FUSION_MODE_RRF,
    }
    with tempfile.TemporaryDirectory(prefix="llmesh-recall-eval-") as tmp:
        settings = load_settings(
            MemorySettings,
            host="127.0.0.1",
            port=0,
            data_dir=Path(tmp),
            store="sqlite",
            embedder_target=embedder_target,
            embed_timeout_s=120.0,
        )
        async with (
            serving(settings, SERVICE_NAMES, lambda host: wire(host, settings)) as served,
            grpc.aio.insecure_channel(served.address) as channel,
        ):
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            to_dataset: dict[str, str] = {}
            started = time.perf_counter()
            for ns in dataset.namespaces:
                for memory in ns.memories:
                    reply = await stub.Remember(
                        memory_pb2.MemoryServiceRememberRequest(
                            namespace=ns.name,
                            memory=common_pb2.MemoryDraft(
                                text=memory.text,
                                metadata=common_pb2.Metadata(entries={"eval_id": memory.id}),
                                idempotency_key=f"eval-{memory.id}",
                            ),
                        ),
                        timeout=120,
                    )
                    if not reply.embedded:
                        raise SystemExit(f"{memory.id} was stored without a vector")
                    to_dataset[reply.id] = memory.id
            remember_s = time.perf_counter() - started
            degraded: list[str] = []
            latencies: list[float] = []

            async def recall(namespace: str, query: str, mode: str) -> list[str]:
                t0 = time.perf_counter()
                reply = await stub.Recall(
                    memory_pb2.MemoryServiceRecallRequest(
                        namespace=namespace,
                        query=query,
                        options=common_pb2.RecallOptions(k=k, mode=fusion[mode]),
                    ),
                    timeout=60,
                )
                latencies.append(time.perf_counter() - t0)
                if reply.degraded:
                    degraded.append(f"{mode}: {query} ({reply.degraded_reason})")
                return [to_dataset.get(h.memory.id, h.memory.id) for h in reply.hits]

            rankings = await evaluate_async(dataset, recall)
    if degraded:
        raise SystemExit(f"{len(degraded)} recalls were degraded, e.g. {degraded[0]}")
    latencies.sort()
    return {
        "rankings": rankings,
        "remember_s": round(remember_s, 2),
        "recall_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "recall_calls": len(latencies),
    }


@contextmanager
def committed_embedder(vectors: Mapping[str, Any]) -> Iterator[str]:
    """An ``InferenceService.Embed`` on a free loopback port that serves committed vectors
    of the real model (``bench/recall_eval/vectors/``); NOT_FOUND for any other text."""
    import threading
    from concurrent import futures

    import grpc

    from llmesh.v1 import inference_pb2, inference_pb2_grpc

    class Servicer(inference_pb2_grpc.InferenceServiceServicer):
        def Embed(self, request: Any, context: Any) -> Any:
            missing = [t for t in request.texts if t not in vectors]
            if missing:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no committed vector for {missing[0]!r}")
            return inference_pb2.InferenceServiceEmbedResponse(
                embeddings=[
                    inference_pb2.Embedding(values=[float(x) for x in vectors[t]])
                    for t in request.texts
                ],
                dimensions=len(next(iter(vectors.values()))),
                model="all-minilm-l6-v2",
            )

    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = Servicer()  # type: ignore[abstract]  # only Embed is served
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        done: threading.Event = server.stop(grace=None)
        done.wait(10)


def report_set(name: str, dataset: Dataset, run: Mapping[str, Any]) -> dict[str, Any]:
    """Scores per mode and kind, the default's checks and the misses of one set."""
    scores = summarize(dataset, run["rankings"])
    return {
        "held_out": name == "heldout",
        "dataset": {
            "file": f"bench/recall_eval/{SETS[name]}",
            "namespaces": {ns.name: len(ns.memories) for ns in dataset.namespaces},
            "queries": {kind: len(dataset.queries_of(kind)) for kind in KINDS},
        },
        "remember_s": run["remember_s"],
        "recall_p50_ms": run["recall_p50_ms"],
        "recall_calls": run["recall_calls"],
        "scores": {
            mode: {kind: s.as_dict() for kind, s in by_kind.items()}
            for mode, by_kind in scores.items()
        },
        "default_hybrid_checks": hybrid_checks(scores),
        "misses_at_1": misses(dataset, run["rankings"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--embedder", help="host:port of a running inference worker (Embed)")
    parser.add_argument(
        "--vectors",
        choices=("service", "committed"),
        default="service",
        help="service: a real worker computes every vector (default); committed: the "
        "committed vectors of the same model, no worker",
    )
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--k", type=int, default=10, help="hits asked of each Recall")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    datasets = {name: dataset_of(name) for name in args.sets}
    runs: dict[str, dict[str, Any]] = {}
    if args.vectors == "committed":
        vectors: dict[str, Any] = {}
        for name in args.sets:
            vectors.update(load_vectors(name))
        with committed_embedder(vectors) as target:
            for name, dataset in datasets.items():
                runs[name] = asyncio.run(run_service(dataset, target, k=args.k))
        embedder = "committed all-MiniLM-L6-v2 vectors (bench/recall_eval/vectors/), no worker"
    elif args.embedder:
        for name, dataset in datasets.items():
            runs[name] = asyncio.run(run_service(dataset, args.embedder, k=args.k))
        embedder = f"external inference worker at {args.embedder}"
    else:
        home = Path(tempfile.mkdtemp(prefix="llmesh-recall-eval-"))
        with inference_worker(home) as target:
            for name, dataset in datasets.items():
                runs[name] = asyncio.run(run_service(dataset, target, k=args.k))
        embedder = "llmesh serve inference --blas-threads 1 (embeddings only), started here"
    sets = {name: report_set(name, datasets[name], runs[name]) for name in args.sets}
    results = {
        "benchmark": "recall_quality",
        "setup": {
            "memory": "llmesh memory service in-process, a fresh SQLite store per set, "
            "Remember/Recall over gRPC",
            "embedder": embedder,
            "model": "all-minilm-l6-v2 (MLX)",
            "k": args.k,
        },
        "sets": sets,
        "all_checks_pass": all(all(r["default_hybrid_checks"].values()) for r in sets.values()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    for name in args.sets:
        scores = summarize(datasets[name], runs[name]["rankings"])
        label = " (HELD OUT: never used for tuning)" if name == "heldout" else ""
        print(f"\n[{name}]{label}  {SETS[name]}, {len(datasets[name].queries)} queries")
        print(format_table(scores))
        print(json.dumps(sets[name]["default_hybrid_checks"]))
    print(f"all checks pass: {results['all_checks_pass']}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
