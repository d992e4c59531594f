"""Sampling options: validation of the request and per-request seeded samplers.

Each request samples with its own PRNG key (from its seed, or a random one), split
once per generated token. Its choices therefore depend only on its own logits and
its own seed, never on which other requests share the decode batch or on the
process-wide MLX random state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from llmesh.kernel.errors import FieldViolation, InvalidArgument
from llmesh.v1 import common_pb2

Sampler = Callable[..., object]

MAX_STOP_SEQUENCES = 8
MAX_STOP_BYTES = 64
MAX_TOKENS_LIMIT = 8192


@dataclass(frozen=True)
class SamplingOptions:
    """Validated sampling options of one request."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def parse_sampling(
    params: common_pb2.SamplingParams | None,
    *,
    default_temperature: float,
    default_max_tokens: int,
    prefix: str = "sampling",
) -> SamplingOptions:
    """Validate ``SamplingParams``; raises ``InvalidArgument`` naming every bad field."""
    p = params if params is not None else common_pb2.SamplingParams()
    bad: list[FieldViolation] = []
    temperature = p.temperature if p.HasField("temperature") else default_temperature
    if not 0.0 <= temperature <= 2.0 or math.isnan(temperature):
        bad.append(FieldViolation(f"{prefix}.temperature", "must be in [0, 2]"))
    top_p = p.top_p if p.HasField("top_p") else 1.0
    if not 0.0 < top_p <= 1.0:
        bad.append(FieldViolation(f"{prefix}.top_p", "must be in (0, 1]"))
    top_k = p.top_k if p.HasField("top_k") else 0
    if top_k < 0:
        bad.append(FieldViolation(f"{prefix}.top_k", "must be >= 0 (0 disables it)"))
    max_tokens = p.max_tokens if p.HasField("max_tokens") else default_max_tokens
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        bad.append(FieldViolation(f"{prefix}.max_tokens", f"must be in 1..{MAX_TOKENS_LIMIT}"))
    stops = tuple(p.stop)
    if len(stops) > MAX_STOP_SEQUENCES:
        bad.append(FieldViolation(f"{prefix}.stop", f"at most {MAX_STOP_SEQUENCES} sequences"))
    for i, stop in enumerate(stops):
        if not 1 <= len(stop.encode()) <= MAX_STOP_BYTES:
            bad.append(FieldViolation(f"{prefix}.stop[{i}]", f"must be 1..{MAX_STOP_BYTES} bytes"))
    if bad:
        raise InvalidArgument("invalid sampling options", field_violations=bad)
    return SamplingOptions(
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        max_tokens=int(max_tokens),
        stop=stops,
        seed=int(p.seed) if p.HasField("seed") else None,
    )


def make_sampler(options: SamplingOptions, vocab_size: int) -> Sampler:
    """A sampler ``logprobs (1, V) -> token (1,)`` with its own PRNG key.

    Greedy requests (temperature 0) share :func:`greedy`, so a batch of greedy
    requests samples in one call.
    """
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_top_k, apply_top_p

    if options.greedy:
        return greedy
    seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(8), "little")
    state = [mx.random.key(seed & 0xFFFFFFFFFFFFFFFF)]
    inv_temp = 1.0 / options.temperature
    top_k = options.top_k if 0 < options.top_k < vocab_size else 0
    top_p = options.top_p

    def sample(logprobs: mx.array) -> mx.array:
        state[0], key = mx.random.split(state[0])
        if top_k:
            logprobs = apply_top_k(logprobs, top_k)
        if top_p < 1.0:
            logprobs = apply_top_p(logprobs, top_p)
        return mx.random.categorical(logprobs * inv_temp, key=key)

    return sample


def greedy(logprobs: object) -> object:
    """The most likely token of each row."""
    import mlx.core as mx

    assert isinstance(logprobs, mx.array)
    return mx.argmax(logprobs, axis=-1)
