"""The worker's BLAS handling: the shared :mod:`llmesh.blas` under its historical path.

It lives in ``libs/llmesh`` because the memory service preloads OpenBLAS too when it
embeds in-process (``local_embedder``).
"""

from llmesh.blas import (
    DEBIAN_OPENBLAS,
    REEXEC_MARKER,
    BlasPreload,
    detect_blas,
    find_openblas_preload,
    reexec_with_openblas,
    sgemm_library,
)

__all__ = [
    "DEBIAN_OPENBLAS",
    "REEXEC_MARKER",
    "BlasPreload",
    "detect_blas",
    "find_openblas_preload",
    "reexec_with_openblas",
    "sgemm_library",
]
