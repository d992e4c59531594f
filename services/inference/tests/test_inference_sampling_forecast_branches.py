"""In-process tests of the queue-wait forecast (forecast.py) and sampling options and
samplers (sampling.py): exact figures for each branch."""

from __future__ import annotations

import pytest

from llmesh.v1 import common_pb2
from llmesh_inference.forecast import ServiceRate, first_token_s, slot_heap, take_slot
from llmesh_inference.sampling import SamplingOptions, greedy, make_sampler, parse_sampling


def test_service_rate_moving_averages() -> None:
    rate = ServiceRate(alpha=0.5)
    rate.observe_step(0.2)  # the first measurement is taken as it is
    assert rate.step_s == pytest.approx(0.2)
    rate.observe_step(0.4)
    assert rate.step_s == pytest.approx(0.3)
    rate.observe_finished(5, 0)  # no max_tokens: ignored
    assert not rate.measured and rate.share_used == 1.0
    rate.observe_finished(30, 10)  # capped at 1
    assert rate.measured and rate.share_used == 1.0
    rate.observe_finished(0, 10)
    assert rate.share_used == pytest.approx(0.5)


def test_expected_tokens_and_steps_left() -> None:
    rate = ServiceRate(share_used=0.25, measured=True)
    assert rate.expected_tokens(100) == 25.0
    assert rate.expected_tokens(1) == 1.0  # at least one token
    assert rate.steps_left(100, 10) == 15.0
    assert rate.steps_left(100, 24.5) == 1.0  # type: ignore[arg-type]  # at least one step
    # past the average already: half of what it may still take
    assert rate.steps_left(100, 40) == 30.0
    assert rate.steps_left(100, 100) == 1.0


def test_slots_replay_the_queue() -> None:
    heap = slot_heap(3, [5.0, 2.0, 9.0, 1.0])  # more running than slots: the soonest count
    assert sorted(heap) == [1.0, 2.0, 5.0]
    free = slot_heap(3, [4.0])
    assert sorted(free) == [0.0, 0.0, 4.0]
    assert take_slot(free, 10.0) == 0.0
    assert take_slot(free, 10.0) == 0.0
    assert take_slot(free, 10.0) == 4.0  # the third request waits for the running one
    assert take_slot(free, 1.0) == 10.0
    assert first_token_s(0, 0.05) == pytest.approx(0.05)
    assert first_token_s(4, 0.5) == pytest.approx(2.5)


def test_parse_sampling_defaults_and_explicit_values() -> None:
    defaults = parse_sampling(None, default_temperature=0.7, default_max_tokens=64)
    assert defaults == SamplingOptions(temperature=0.7, max_tokens=64)
    assert not defaults.greedy and defaults.seed is None
    params = common_pb2.SamplingParams(
        temperature=0.0, top_p=0.5, top_k=3, max_tokens=9, stop=["x", "y"], seed=11
    )
    explicit = parse_sampling(params, default_temperature=0.7, default_max_tokens=64)
    assert explicit.greedy  # an explicit 0 is not the default
    assert (explicit.top_p, explicit.top_k, explicit.max_tokens) == (0.5, 3, 9)
    assert explicit.stop == ("x", "y") and explicit.seed == 11


def test_greedy_requests_share_one_sampler() -> None:
    import mlx.core as mx

    sampler = make_sampler(SamplingOptions(temperature=0.0), vocab_size=4)
    assert sampler is greedy
    logprobs = mx.array([[0.1, 0.9, 0.0, -1.0], [2.0, 0.0, 0.0, 0.0]])
    assert greedy(logprobs).tolist() == [1, 0]


def test_seeded_sampling_repeats_and_top_k_keeps_the_best() -> None:
    import mlx.core as mx

    logprobs = mx.log(mx.array([[0.05, 0.9, 0.05, 0.0001]]))
    options = SamplingOptions(temperature=1.0, top_k=1, seed=42)
    first = make_sampler(options, vocab_size=4)
    again = make_sampler(options, vocab_size=4)
    drawn = [first(logprobs).item() for _ in range(8)]
    assert drawn == [again(logprobs).item() for _ in range(8)]  # same seed, same draws
    assert set(drawn) == {1}  # top_k=1 leaves only the best token


def test_top_p_and_unbounded_top_k() -> None:
    import mlx.core as mx

    logprobs = mx.log(mx.array([[0.02, 0.96, 0.02]]))
    # top_k >= vocab is ignored; top_p 0.5 keeps only the 0.96 token
    sampler = make_sampler(
        SamplingOptions(temperature=2.0, top_k=10, top_p=0.5, seed=1), vocab_size=3
    )
    assert {sampler(logprobs).item() for _ in range(16)} == {1}
    unseeded = make_sampler(SamplingOptions(temperature=1.0), vocab_size=3)
    assert unseeded(logprobs).item() in (0, 1, 2)
