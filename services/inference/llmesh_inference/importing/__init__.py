"""``llmesh models import``: GGUF files and Hugging Face folders → mlx-lm model folders.

One job per module: :mod:`gguf_file` reads a GGUF file (metadata, tensor types, names,
Q/K unpermutation), :mod:`affine` maps GGUF Q4/Q8 blocks onto MLX quantization,
:mod:`gguf_weights` turns the tensors into stored weights, :mod:`tokenizer` builds
``tokenizer.json`` from the GGUF vocabulary, :mod:`config` writes mlx-lm's config,
:mod:`from_hf` reads a Hugging Face folder, :mod:`folder` writes the result
atomically, :mod:`smoke` generates a few greedy tokens from it, :mod:`dtype` picks
the stored dtype for the backend, and :mod:`run` ties them together.
"""

from llmesh_inference.importing.default import DEFAULT_MODEL_NAME, default_gguf
from llmesh_inference.importing.errors import ModelImportError
from llmesh_inference.importing.folder import RECORD, read_record
from llmesh_inference.importing.run import ImportResult, default_name, import_model

__all__ = [
    "DEFAULT_MODEL_NAME",
    "RECORD",
    "ImportResult",
    "ModelImportError",
    "default_gguf",
    "default_name",
    "import_model",
    "read_record",
]
