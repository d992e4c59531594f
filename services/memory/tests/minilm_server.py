"""A minimal real ``InferenceService.Embed`` (MiniLM in MLX, OpenBLAS preloaded) for tests.

Run as ``python minilm_server.py PORT``; prints ``READY`` when it serves. Started as a
child process so MLX gets the optimized BLAS (a preload must precede the process)."""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _serve(port: int) -> None:
    import grpc

    from llmesh.v1 import inference_pb2, inference_pb2_grpc
    from llmesh_inference.embeddings import MiniLMEmbedder

    thread = ThreadPoolExecutor(1)
    model = thread.submit(MiniLMEmbedder.load).result()

    class Servicer(inference_pb2_grpc.InferenceServiceServicer):  # only Embed is served
        async def Embed(self, request: Any, context: Any) -> Any:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(thread, model.embed, list(request.texts))
            return inference_pb2.InferenceServiceEmbedResponse(
                embeddings=[inference_pb2.Embedding(values=v.tolist()) for v in result.vectors],
                dimensions=int(result.vectors.shape[1]),
                model="all-minilm-l6-v2",
            )

    async def main() -> None:
        server = grpc.aio.server()
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            Servicer(),  # type: ignore[abstract]
            server,
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("READY", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


if __name__ == "__main__":
    from llmesh_inference.blas import REEXEC_MARKER, find_openblas_preload

    if not os.environ.get(REEXEC_MARKER):
        preload = find_openblas_preload()
        if preload is not None:
            env = preload.apply(os.environ)
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
    _serve(int(sys.argv[1]))
