"""Sentence embeddings of the inference worker: the shared :mod:`llmesh.embeddings`.

The model code lives in ``libs/llmesh/embeddings`` because the memory service runs the
same encoder in-process when configured (``local_embedder``); this package re-exports it
under the worker's historical import path.
"""

from llmesh.embeddings import (
    DEFAULT_MAX_BATCH_TOKENS,
    MAX_TOKENS,
    MODEL_NAME,
    Batch,
    BertConfig,
    EmbeddingResult,
    MiniLMEmbedder,
    ModelFiles,
    model_files,
    packaged_model_dir,
    plan_batches,
)

__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "MAX_TOKENS",
    "MODEL_NAME",
    "Batch",
    "BertConfig",
    "EmbeddingResult",
    "MiniLMEmbedder",
    "ModelFiles",
    "model_files",
    "packaged_model_dir",
    "plan_batches",
]
