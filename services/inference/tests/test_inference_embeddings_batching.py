"""Pad-aware batching under a token budget."""

from __future__ import annotations

import pytest

from llmesh.kernel.errors import InvalidArgument
from llmesh_inference.embeddings import Batch, plan_batches


def _check_partition(batches: list[Batch], n: int) -> None:
    seen = sorted(i for b in batches for i in b.indices)
    assert seen == list(range(n))


def test_every_batch_fits_the_padded_budget() -> None:
    lengths = [5, 200, 17, 17, 3, 256, 64, 64, 64, 9, 120, 2]
    batches = plan_batches(lengths, max_batch_tokens=300)
    _check_partition(batches, len(lengths))
    for batch in batches:
        assert batch.padded_length == max(lengths[i] for i in batch.indices)
        assert batch.cost == len(batch.indices) * batch.padded_length <= 300


def test_longest_first_and_similar_lengths_together() -> None:
    lengths = [10, 100, 10, 100, 10, 100]
    batches = plan_batches(lengths, max_batch_tokens=300)
    assert [b.indices for b in batches] == [(1, 3, 5), (0, 2, 4)]
    assert [b.padded_length for b in batches] == [100, 10]


def test_padding_is_counted_not_just_real_tokens() -> None:
    # Real tokens 100 + 1 + 1 = 102 fit 250, but padded to 100 each they cost 300.
    batches = plan_batches([100, 1, 1], max_batch_tokens=250)
    assert [b.indices for b in batches] == [(0, 1), (2,)]


def test_over_budget_input_runs_alone_and_batch_size_caps() -> None:
    assert [b.indices for b in plan_batches([500, 4], max_batch_tokens=256)] == [(0,), (1,)]
    batches = plan_batches([4] * 10, max_batch_tokens=10_000, max_batch_size=4)
    assert [len(b.indices) for b in batches] == [4, 4, 2]


def test_empty_and_invalid() -> None:
    assert plan_batches([], max_batch_tokens=10) == []
    with pytest.raises(InvalidArgument):
        plan_batches([3], max_batch_tokens=0)
    with pytest.raises(InvalidArgument):
        plan_batches([3], max_batch_tokens=10, max_batch_size=0)
