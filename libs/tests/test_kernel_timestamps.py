"""Expiries bounded by what a protobuf Timestamp can carry."""

from __future__ import annotations

import math

import pytest

from llmesh.kernel.errors import InvalidArgument
from llmesh.kernel.timestamps import (
    MAX_TIMESTAMP_S,
    check_expiry,
    expiry,
    stored_expiry,
    to_timestamp,
)

NOW = 1_700_000_000.0


def test_expiry_of_a_ttl() -> None:
    assert expiry(NOW, None) is None
    assert expiry(NOW, 0) is None
    assert expiry(NOW, 60) == NOW + 60
    assert expiry(NOW, MAX_TIMESTAMP_S - NOW) == MAX_TIMESTAMP_S


@pytest.mark.parametrize("ttl", [1e12, math.inf, math.nan, -1.0])
def test_out_of_range_ttl_is_refused_naming_the_field(ttl: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        expiry(NOW, ttl, field="ttl")
    assert caught.value.field_violations[0].field == "ttl"


def test_check_expiry() -> None:
    assert check_expiry(None) is None
    with pytest.raises(InvalidArgument):
        check_expiry(MAX_TIMESTAMP_S + 1)


def test_stored_out_of_range_expiry_reads_as_never() -> None:
    assert stored_expiry(NOW, what="x") == NOW
    assert stored_expiry(NOW + 1e12, what="row 1") is None
    assert stored_expiry(math.nan, what="row 2") is None


def test_to_timestamp_never_fails() -> None:
    assert to_timestamp(None) is None
    assert to_timestamp(math.nan) is None
    assert to_timestamp(NOW + 1e12).seconds == int(MAX_TIMESTAMP_S)  # type: ignore[union-attr]
    assert to_timestamp(-1e13).ToSeconds() == -62_135_596_800  # type: ignore[union-attr]
    assert to_timestamp(NOW).ToSeconds() == NOW  # type: ignore[union-attr]
