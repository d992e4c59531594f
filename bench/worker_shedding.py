"""A burst of concurrent ``GenerateStream`` calls beyond what two workers can serve before
the callers' deadlines: how many are served, refused early, or wait out their deadline.

The mesh: registry, two tiny-model workers (each with its registrar) paced at
``--decode-delay-ms`` a decode step in batches of ``--batch``, and the gateway, each its
own process (the plan of ``llmesh up``). After a warm-up of 8 calls (the workers measure
their pace), ``--calls`` calls start at once, each with deadline ``--deadline-s`` and
``max_tokens`` ``--max-tokens``. Outcomes:

- **ok**; **refused early**: ``RESOURCE_EXHAUSTED`` (by reason) before the deadline;
- **waited out**: ``DEADLINE_EXCEEDED`` with no token received (queued until the deadline);
- **cut by the deadline**: ``DEADLINE_EXCEEDED`` after tokens; **other** errors by code.

Writes ``bench/results/worker_shedding[-LABEL].json`` and prints a markdown row::

    .venv/bin/python -m bench.worker_shedding --label after
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from llmesh.testing.rpc import error_details
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, registry_pb2, registry_pb2_grpc

MODEL = "tiny-llama-test"
RESULTS = Path(__file__).parent / "results"


async def _call(stub: Any, key: str, deadline_s: float, max_tokens: int, i: int) -> dict[str, Any]:
    started = time.monotonic()
    tokens = 0
    outcome: dict[str, Any] = {"code": "OK", "reason": ""}
    try:
        async for response in stub.GenerateStream(
            gateway_pb2.GenerateStreamRequest(
                input=common_pb2.GenerationInput(
                    prompt=f"burst {i}",
                    sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0),
                )
            ),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=deadline_s,
        ):
            tokens += len(response.delta.token_ids)
    except grpc.aio.AioRpcError as exc:
        info = error_details(exc).get("error_info")
        outcome = {"code": exc.code().name, "reason": info.reason if info is not None else ""}
    outcome.update(tokens=tokens, seconds=time.monotonic() - started)
    return outcome


def _ready(registry: str) -> int:
    with grpc.insecure_channel(registry) as channel:
        try:
            reply = registry_pb2_grpc.RegistryServiceStub(channel).ListWorkers(
                registry_pb2.RegistryServiceListWorkersRequest(state=common_pb2.WORKER_STATE_READY),
                timeout=5,
            )
        except grpc.RpcError:
            return 0
        return len(reply.workers)


def summarize(outcomes: list[dict[str, Any]], deadline_s: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o["code"] == "OK"]
    refused = [o for o in outcomes if o["code"] == "RESOURCE_EXHAUSTED"]
    deadline = [o for o in outcomes if o["code"] == "DEADLINE_EXCEEDED"]
    waited = [o for o in deadline if not o["tokens"]]
    other = [
        o for o in outcomes if o["code"] not in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
    ]

    def p50(items: list[dict[str, Any]]) -> float | None:
        return round(statistics.median(o["seconds"] for o in items), 2) if items else None

    return {
        "calls": len(outcomes),
        "deadline_s": deadline_s,
        "ok": len(ok),
        "ok_p50_s": p50(ok),
        "refused_early": len(refused),
        "refused_by_reason": dict(Counter(o["reason"] for o in refused)),
        "refused_p50_s": p50(refused),
        "refused_max_s": round(max(o["seconds"] for o in refused), 2) if refused else None,
        "waited_out_deadline": len(waited),
        "cut_by_deadline_mid_stream": len(deadline) - len(waited),
        "other": dict(Counter(f"{o['code']}/{o['reason']}" for o in other)),
    }


async def burst(gateway: str, key: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        await asyncio.gather(*(_call(stub, key, 60, 16, -i) for i in range(8)))
        return list(
            await asyncio.gather(
                *(_call(stub, key, args.deadline_s, args.max_tokens, i) for i in range(args.calls))
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--deadline-s", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--queue-capacity", type=int, default=64)
    parser.add_argument("--decode-delay-ms", type=float, default=20.0)
    parser.add_argument("--label", default="")
    args = parser.parse_args()

    from llmesh_cli.supervisor.mesh import LocalMesh, mesh_options
    from llmesh_cli.supervisor.plan import build_plan
    from llmesh_inference.tiny import init_tiny

    with tempfile.TemporaryDirectory(prefix="shedding-") as tmp_name:
        tmp = Path(tmp_name)
        init_tiny(tmp / "models" / MODEL, size="test")
        worker = ["--max-batch-size", str(args.batch), "--queue-capacity", str(args.queue_capacity)]
        paced = {"LLMESH_INFERENCE_DECODE_DELAY_MS": str(args.decode_delay_ms)}
        options = mesh_options(
            tmp,
            models_dir=tmp / "models",
            default_model=MODEL,
            services=("registry", "inference", "registrar", "gateway"),
            workers=2,
            embeddings=False,
            args={"inference": worker, "inference-1": worker},
            env={
                "inference": paced,
                "inference-1": paced,
                "gateway": {
                    "LLMESH_GATEWAY_RATE_LIMIT__GENERATIONS_PER_MINUTE": "60000000",
                    "LLMESH_GATEWAY_RATE_LIMIT__REQUESTS_PER_MINUTE": "60000000",
                    "LLMESH_GATEWAY_RATE_LIMIT__TOKENS_PER_MINUTE": "6000000000",
                    "LLMESH_GATEWAY_RATE_LIMIT__CONCURRENT_STREAMS": "0",
                },
            },
        )
        with LocalMesh(build_plan(options), home=tmp) as mesh:
            mesh.start()
            deadline = time.monotonic() + 120
            while _ready(mesh.address("registry")) < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("two READY workers")
                time.sleep(0.2)
            key = mesh.create_key(role="user", tenant="bench")
            outcomes = asyncio.run(burst(mesh.address("gateway"), key, args))
    result = {
        "label": args.label,
        "conditions": {
            "workers": 2,
            "max_batch_size": args.batch,
            "queue_capacity": args.queue_capacity,
            "decode_delay_ms": args.decode_delay_ms,
            "max_tokens": args.max_tokens,
        },
        **summarize(outcomes, args.deadline_s),
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"worker_shedding{'-' + args.label if args.label else ''}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
