"""Points in time that must fit a ``google.protobuf.Timestamp`` (year 1..9999).

Stores keep times as Unix seconds (``float``). An expiry computed from a huge TTL
(``now + 1e12``) fits a float and a database column but not a ``Timestamp``, so
every reply that carries it would fail. :func:`expiry` refuses such a TTL before
anything is written; :func:`stored_expiry` reads a row written before that check
existed as "never expires" (and says so once in the log) instead of failing the read.
"""

from __future__ import annotations

import functools
import math

from google.protobuf import timestamp_pb2

from .errors import invalid
from .logging import get_logger

MAX_TIMESTAMP_S = 253_402_300_799.0
"""9999-12-31T23:59:59Z: the latest instant a ``google.protobuf.Timestamp`` holds."""
MIN_TIMESTAMP_S = -62_135_596_800.0
"""0001-01-01T00:00:00Z: the earliest."""

_log = get_logger(__name__)


def expiry(now: float, ttl_s: float | None, *, field: str = "ttl") -> float | None:
    """``now + ttl_s``, or None for no TTL (``None`` or ``0``).

    Raises ``InvalidArgument`` naming ``field`` when the TTL is negative, not a number,
    or ends after ``MAX_TIMESTAMP_S``.
    """
    if ttl_s is None or ttl_s == 0:
        return None
    if not math.isfinite(ttl_s) or ttl_s < 0:
        raise invalid(field, "must be a finite, non-negative duration (0 means never)")
    return check_expiry(now + ttl_s, field=field)


def check_expiry(expires_at: float | None, *, field: str = "ttl") -> float | None:
    """``expires_at`` itself; ``InvalidArgument`` when it is past ``MAX_TIMESTAMP_S``."""
    if expires_at is not None and not expires_at <= MAX_TIMESTAMP_S:
        raise invalid(field, "expires after 9999-12-31T23:59:59Z; use a shorter duration")
    return expires_at


def stored_expiry(value: float | None, *, what: str) -> float | None:
    """A stored expiry as read: one past ``MAX_TIMESTAMP_S`` (or NaN) means never.

    ``what`` names the row in the warning (``"memory mem_..."``).
    """
    if value is None or value <= MAX_TIMESTAMP_S:
        return value
    _warn_once(what, value)
    return None


@functools.lru_cache(maxsize=256)
def _warn_once(what: str, value: float) -> None:
    _log.warning("%s has an out-of-range expiry (%r); treated as never expiring", what, value)


def to_timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    """A ``Timestamp`` for Unix ``seconds``, None for None; clamped into the valid range."""
    if seconds is None or math.isnan(seconds):
        return None
    clamped = min(max(seconds, MIN_TIMESTAMP_S), MAX_TIMESTAMP_S)
    whole = math.floor(clamped)
    nanos = min(999_999_999, round((clamped - whole) * 1e9))
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)
