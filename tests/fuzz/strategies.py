"""Hypothesis strategies for hostile requests, built from a request type's descriptor and
encoded straight to the wire (so they can hold what no protobuf library would send):
strings of extreme sizes and invalid UTF-8, negative and huge numbers in every integer
field (64-bit, so past int32/uint32 too), unknown enum values, NaN and infinities,
nested messages down to a depth, long repeated fields and maps, unknown fields, and plain
random bytes. ``requests(descriptor, seed)`` also lays hostile fields over a valid request
(on the wire the last value of a field wins), which reaches past the first validation
error into the service logic.

Encoding helpers and the fixed hostile values are ``e2etest.fuzz_payloads``'s.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from e2etest.fuzz_payloads import (
    HUGE_INTS,
    INVALID_UTF8,
    _length_delimited,
    _tag,
    _varint,
)
from google.protobuf import descriptor as pb_descriptor
from hypothesis import strategies as st

FD = pb_descriptor.FieldDescriptor
MAX_DEPTH = 3
MAX_BYTES = 9 * 1024 * 1024  # past the servers' 8 MiB limit, not far

# Sizes around the contracts' limits (128, 256, 1000, 4096, 65536 ...) and far past them.
SIZES = st.sampled_from(
    (
        *(0, 1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257, 999, 1000, 1001, 1024, 1025),
        *(4095, 4096, 4097, 8192, 8193, 32768, 65535, 65536, 65537, 200_000, 1_500_000),
    )
)
COUNTS = st.one_of(
    st.integers(0, 3), st.sampled_from([16, 32, 33, 100, 256, 257, 1000, 1001, 5000])
)
EDGE_INTS = st.sampled_from(
    (
        *(0, 1, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**32 - 1, 2**32, 2**53 + 1),
        *(2**63 - 1, -(2**63), *HUGE_INTS),
    )
)
INTEGERS = st.one_of(EDGE_INTS, st.integers(-(2**63), 2**64 - 1), st.integers(-5, 1000))
FILLERS = st.sampled_from(["a", "é", "😀", "\x00", " ", "\u202e", "\ufeff", "a\n", "%s"])


def _invalid_utf8() -> st.SearchStrategy[bytes]:
    def broken(raw: bytes) -> bool:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    return st.one_of(
        st.sampled_from(INVALID_UTF8),
        st.binary(min_size=1, max_size=64).filter(broken),
        # A lone surrogate, as CESU-8 would write it, inside valid text.
        st.builds(
            lambda a, s, b: a.encode() + chr(s).encode("utf-8", "surrogatepass") + b.encode(),
            st.text(max_size=8),
            st.integers(0xD800, 0xDFFF),
            st.text(max_size=8),
        ),
    )


def text_bytes() -> st.SearchStrategy[bytes]:
    """A string field's bytes: any text, text of an extreme size, or not UTF-8 at all."""
    return st.one_of(
        st.text(max_size=40).map(str.encode),
        st.builds(lambda fill, n: (fill * n).encode(), FILLERS, SIZES),
        _invalid_utf8(),
    )


def _scalar(field: FD) -> st.SearchStrategy[bytes] | None:
    """The encoded tag + value of one scalar (or enum) field, or None for a message."""
    n = field.number
    t = field.type
    if t == FD.TYPE_STRING:
        return text_bytes().map(lambda raw: _length_delimited(n, raw))
    if t == FD.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), SIZES.map(lambda k: b"\x00" * k)).map(
            lambda raw: _length_delimited(n, raw)
        )
    if t in (
        FD.TYPE_INT32,
        FD.TYPE_INT64,
        FD.TYPE_UINT32,
        FD.TYPE_UINT64,
        FD.TYPE_SINT32,
        FD.TYPE_SINT64,
        FD.TYPE_BOOL,
        FD.TYPE_ENUM,  # unknown values included: any 64-bit number
    ):
        return INTEGERS.map(lambda v: _tag(n, 0) + _varint(v))
    if t == FD.TYPE_FLOAT:
        return st.floats(width=32).map(lambda v: _tag(n, 5) + struct.pack("<f", v))
    if t == FD.TYPE_DOUBLE:
        return st.floats().map(lambda v: _tag(n, 1) + struct.pack("<d", v))
    if t in (FD.TYPE_FIXED32, FD.TYPE_SFIXED32):
        return st.binary(min_size=4, max_size=4).map(lambda raw: _tag(n, 5) + raw)
    if t in (FD.TYPE_FIXED64, FD.TYPE_SFIXED64):
        return st.binary(min_size=8, max_size=8).map(lambda raw: _tag(n, 1) + raw)
    return None


def _field(field: FD, depth: int) -> st.SearchStrategy[bytes]:
    scalar = _scalar(field)
    if scalar is not None:
        return scalar
    sub: pb_descriptor.Descriptor = field.message_type
    if depth >= MAX_DEPTH:
        return st.binary(max_size=16).map(lambda raw: _length_delimited(field.number, raw))
    return message_bytes(sub, depth + 1).map(lambda raw: _length_delimited(field.number, raw))


def _unknown_field() -> st.SearchStrategy[bytes]:
    return st.tuples(st.integers(1000, 2**29 - 1), st.binary(max_size=32)).map(
        lambda p: _length_delimited(p[0], p[1])
    )


def message_bytes(descriptor: pb_descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[bytes]:
    """One message of type ``descriptor``, on the wire: each field present or not (a
    repeated one up to thousands of times), any value, sometimes an unknown field."""
    fields = list(descriptor.fields)

    @st.composite
    def build(draw: Callable[..., object]) -> bytes:
        out = bytearray()
        for field in fields:
            if len(out) > MAX_BYTES:
                break
            if not draw(st.booleans()):
                continue
            repeated = field.is_repeated
            count = draw(COUNTS) if repeated else 1
            if repeated and count > 3:
                one = draw(_field(field, depth))  # one value many times: fast to draw
                assert isinstance(one, bytes)
                # Long lists of small values; big values a few times (the total stays
                # near the servers' 8 MiB message limit, sometimes just past it).
                out += one * (count if len(one) <= 2048 else min(count, MAX_BYTES // len(one) + 1))
                continue
            for _ in range(count):
                value = draw(_field(field, depth))
                assert isinstance(value, bytes)
                out += value
        if draw(st.integers(0, 9)) == 0:
            extra = draw(_unknown_field())
            assert isinstance(extra, bytes)
            out += extra
        return bytes(out)

    return build()


def requests(descriptor: pb_descriptor.Descriptor, seed: bytes) -> st.SearchStrategy[bytes]:
    """Hostile requests of one type: hostile fields over the valid ``seed``, a hostile
    message on its own, or plain random bytes (which may not parse at all)."""
    return st.one_of(
        message_bytes(descriptor).map(lambda raw: seed + raw),
        message_bytes(descriptor),
        st.binary(max_size=256),
        st.binary(min_size=1, max_size=64).map(lambda raw: seed + raw),
    )
