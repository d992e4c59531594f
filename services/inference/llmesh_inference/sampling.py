"""Sampling options: the request's values over the worker's defaults, and seeded samplers.

Each request samples with its own PRNG key (from its seed, or a random one), split
once per generated token. Its choices therefore depend only on its own logits and
its own seed, never on which other requests share the decode batch or on the
process-wide MLX random state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from llmesh.v1 import common_pb2

Sampler = Callable[..., object]


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
    """Resolve ``SamplingParams`` against the worker's defaults.

    The ranges are the contract's (``buf.validate`` rules, checked by the kernel).
    """
    p = params if params is not None else common_pb2.SamplingParams()
    temperature = p.temperature if p.HasField("temperature") else default_temperature
    top_p = p.top_p if p.HasField("top_p") else 1.0
    top_k = p.top_k if p.HasField("top_k") else 0
    max_tokens = p.max_tokens if p.HasField("max_tokens") else default_max_tokens
    stops = tuple(p.stop)
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
