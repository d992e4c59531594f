"""Continuous batching on one dedicated MLX thread.

Everything that touches MLX (loading, prefill, decode, embeddings) runs on the
thread started by :class:`Engine`. The asyncio side only appends to queues under
a short lock and receives events through ``loop.call_soon_threadsafe``; it never
waits for MLX.

Each loop iteration: run queued commands (load, unload, embed), drop cancelled
or expired requests, admit queued requests into their model's mlx-lm
``BatchGenerator`` while batch slots are free, then run one ``next()`` on every
generator with work: one decode step for the running requests plus one prefill
chunk for the joining ones. Requests therefore join and leave between steps, and
a cancelled request is removed before the next step computes a token for it.
"""

from __future__ import annotations

from llmesh_inference.admission import Admission
from llmesh_inference.events import (
    CONTEXT_FULL,
    EOS,
    LENGTH,
    STOP,
    Chunk,
    EngineStats,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    RequestHandle,
)
from llmesh_inference.lifecycle import ModelLifecycle
from llmesh_inference.mlx_loop import MlxLoop

__all__ = [
    "CONTEXT_FULL",
    "EOS",
    "LENGTH",
    "STOP",
    "Chunk",
    "Engine",
    "EngineStats",
    "Event",
    "Failed",
    "Finished",
    "GenerationRequest",
    "RequestHandle",
]


class Engine(Admission, MlxLoop, ModelLifecycle):
    """The single MLX thread, its request queue and its counters.

    The parts, one job each: :mod:`admission` (queueing and the move into a batch),
    :mod:`mlx_loop` (the thread and its loop turn), :mod:`lifecycle` (model loads and
    idle unloads); :mod:`engine_core` holds the state they share.
    """
