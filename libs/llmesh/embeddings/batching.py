"""Splitting texts into batches whose padded size stays under a token budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmesh.kernel.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Batch:
    """Input positions run together, padded to ``padded_length`` tokens each."""

    indices: tuple[int, ...]
    padded_length: int

    @property
    def cost(self) -> int:
        """Tokens the forward pass computes for this batch, padding included."""
        return len(self.indices) * self.padded_length


def plan_batches(
    lengths: Sequence[int], *, max_batch_tokens: int, max_batch_size: int | None = None
) -> list[Batch]:
    """Group inputs of the given token lengths so each batch's *padded* cost fits the budget.

    Inputs are sorted by length (longest first) so that similar lengths share a batch and
    little is wasted on padding; each batch costs ``len(batch) * longest`` tokens, at most
    ``max_batch_tokens``. An input longer than the budget on its own gets a batch of one.
    Every index appears in exactly one batch.
    """
    if max_batch_tokens < 1:
        raise InvalidArgument(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    if max_batch_size is not None and max_batch_size < 1:
        raise InvalidArgument(f"max_batch_size must be >= 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[Batch] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = lengths[index]
        if length < 0:
            raise InvalidArgument(f"token length must be >= 0, got {length} at {index}")
        padded = max(longest, length)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * padded > max_batch_tokens):
            batches.append(Batch(tuple(current), longest))
            current, longest, padded = [], 0, length
        current.append(index)
        longest = padded
    if current:
        batches.append(Batch(tuple(current), longest))
    return batches
