"""An append-only in-memory matrix of one namespace's vectors for brute-force search.

Rows below ``n`` never change once written, so a snapshot (views of the first ``n``
rows) stays valid while the index grows; deletions replace the whole index.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .base import Vector


class VectorIndex:
    """Row ids and unit vectors of one namespace."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._rowids: npt.NDArray[np.int64] = np.empty(capacity, np.int64)
        self._matrix: Vector = np.empty((capacity, dim), np.float32)
        self.n = 0

    @classmethod
    def from_arrays(cls, rowids: npt.NDArray[np.int64], matrix: Vector) -> VectorIndex:
        """An index holding ``matrix`` rows for ``rowids``."""
        index = cls(
            matrix.shape[1] if matrix.ndim == 2 and matrix.size else 384,
            max(1024, len(rowids) * 5 // 4),
        )
        index._rowids[: len(rowids)] = rowids
        index._matrix[: len(rowids)] = matrix
        index.n = len(rowids)
        return index

    def add(self, rowid: int, vector: Vector) -> None:
        """Append one vector (ignored when its dimension differs)."""
        if vector.shape != (self.dim,):
            return
        if self.n == len(self._rowids):
            capacity = len(self._rowids) * 2
            rowids = np.empty(capacity, np.int64)
            matrix = np.empty((capacity, self.dim), np.float32)
            rowids[: self.n] = self._rowids[: self.n]
            matrix[: self.n] = self._matrix[: self.n]
            self._rowids, self._matrix = rowids, matrix
        self._matrix[self.n] = vector
        self._rowids[self.n] = rowid
        self.n += 1

    def snapshot(self) -> tuple[npt.NDArray[np.int64], Vector]:
        """Views of the rows written so far."""
        n = self.n
        return self._rowids[:n], self._matrix[:n]


def top_k(
    rowids: npt.NDArray[np.int64], matrix: Vector, query: Vector, k: int
) -> list[tuple[int, float]]:
    """The ``k`` rows most similar (cosine, unit vectors) to ``query``, best first."""
    if len(rowids) == 0 or k <= 0 or query.shape != (matrix.shape[1],):
        return []
    sims = matrix @ query
    part = np.argpartition(-sims, k - 1)[:k] if len(sims) > k else np.arange(len(sims))
    order = part[np.argsort(-sims[part], kind="stable")]
    return [(int(rowids[i]), float(sims[i])) for i in order]
