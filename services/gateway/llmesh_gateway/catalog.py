"""The mesh's model catalog for ``ListModels``, built from the workers' registry records.

Each worker reports its models with their figures when it registers
(``WorkerInfo.models``: context length, parameters, dtype, embedding or not) and
which are loaded with every heartbeat (``models_loaded``); the catalog merges the
figures by name and lists, for each model, the READY workers that have it loaded.
``memory_bytes`` is per worker and left out.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmesh.v1 import common_pb2, gateway_pb2


def _merge(into: common_pb2.ModelInfo, info: common_pb2.ModelInfo) -> None:
    """Fill the figures ``into`` lacks from one worker's report of the same model."""
    into.context_length = into.context_length or info.context_length
    into.parameters = into.parameters or info.parameters
    into.dtype = into.dtype or info.dtype
    into.embedding = into.embedding or info.embedding


def served_models(workers: Iterable[common_pb2.WorkerInfo]) -> list[gateway_pb2.ServedModel]:
    """Every model some worker has loaded or can load, ordered by name."""
    models: dict[str, gateway_pb2.ServedModel] = {}
    for worker in workers:
        figures = {m.name: m for m in worker.models}
        loaded = set(worker.models_loaded)
        names = dict.fromkeys([*worker.models_loaded, *worker.models_available, *figures])
        for name in names:
            served = models.setdefault(
                name, gateway_pb2.ServedModel(model=common_pb2.ModelInfo(name=name))
            )
            info = figures.get(name)
            if info is not None:
                _merge(served.model, info)
                served.model.loaded = served.model.loaded or (info.embedding and info.loaded)
            # An embedding model loads on a worker's first Embed: it is served wherever listed.
            if name in loaded or (info is not None and info.embedding):
                served.model.loaded = served.model.loaded or name in loaded
                ready = worker.state == common_pb2.WORKER_STATE_READY
                if ready and worker.worker_id not in served.worker_ids:
                    served.worker_ids.append(worker.worker_id)
    return [models[name] for name in sorted(models)]
