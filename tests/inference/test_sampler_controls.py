"""Tests of the sampling controls of issue #16: logit_bias, the min_tokens EOS mask, presence and frequency
penalties, min_p, the processor order, and their validation (exact expectations on hand-made logits)."""

from __future__ import annotations

import math

import pytest
import torch

from genmesh.errors import InvalidArgument
from genmesh.sampling import SamplingParams, build_sampling
from services.inference.sampler import Sampler


def test_logit_bias_is_added_exactly_and_forces_or_bans_a_token() -> None:
    logits = torch.tensor([3.0, 1.0, -2.0, 0.5])
    processed = Sampler(SamplingParams(logit_bias=((1, 2.5), (3, -0.5)))).process(logits)
    torch.testing.assert_close(processed, torch.tensor([3.0, 3.5, -2.0, 0.0]))
    forced = Sampler(SamplingParams(logit_bias=((2, 100.0),), seed=1))
    assert {forced.sample(logits).token_id for _ in range(50)} == {2}
    banned = Sampler(SamplingParams(temperature=0.0, logit_bias=((0, -100.0),)))
    assert banned.sample(logits).token_id == 1
    # ids past the vocabulary are ignored (the server refuses them before they get here)
    torch.testing.assert_close(Sampler(SamplingParams(logit_bias=((99, 5.0),))).process(logits), logits)


def test_min_tokens_masks_eos_only_until_the_output_holds_min_tokens() -> None:
    logits = torch.tensor([5.0, 1.0, 0.0])  # token 0 (EOS) is the argmax
    sampler = Sampler(SamplingParams(temperature=0.0, min_tokens=2), eos_token_ids=[0])
    prompt = [1, 2, 1]
    assert math.isinf(sampler.process(logits, prompt, num_prompt=3)[0])
    assert sampler.sample(logits, prompt, num_prompt=3).token_id == 1
    assert sampler.sample(logits, [*prompt, 1], num_prompt=3).token_id == 1  # one output token: still masked
    assert sampler.sample(logits, [*prompt, 1, 1], num_prompt=3).token_id == 0  # two: EOS allowed
    # without min_tokens the EOS id is not touched
    assert Sampler(SamplingParams(temperature=0.0), eos_token_ids=[0]).sample(logits, prompt, 3).token_id == 0


def test_presence_and_frequency_penalties_count_output_tokens_only() -> None:
    logits = torch.tensor([1.0, 1.0, 1.0, 1.0])
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    # prompt [3, 3], output [0, 0, 0, 1]: token 0 three times, token 1 once, token 3 only in the prompt
    processed = Sampler(params).process(logits, [3, 3, 0, 0, 0, 1], num_prompt=2)
    torch.testing.assert_close(processed, torch.tensor([1.0 - 0.5 - 0.75, 1.0 - 0.5 - 0.25, 1.0, 1.0]))
    negative = Sampler(SamplingParams(presence_penalty=-1.0, frequency_penalty=-2.0)).process(logits, [2, 2], 0)
    torch.testing.assert_close(negative, torch.tensor([1.0, 1.0, 1.0 + 1.0 + 4.0, 1.0]))


def test_min_p_drops_exactly_the_tokens_below_the_threshold() -> None:
    probs = torch.tensor([0.5, 0.26, 0.24, 0.0025, 0.0])
    logits = torch.log(probs.clamp_min(1e-12))
    processed = Sampler(SamplingParams(min_p=0.5)).process(logits)
    # 0.5 * 0.5 = 0.25: 0.26 stays, 0.24 and below go
    assert torch.isfinite(processed[:2]).all() and torch.isinf(processed[2:]).all()
    sampler = Sampler(SamplingParams(min_p=0.5, seed=3))
    assert {sampler.sample(logits).token_id for _ in range(200)} == {0, 1}
    assert torch.isfinite(Sampler(SamplingParams(min_p=0.0)).process(logits)).all()


def test_processors_run_in_vllm_order() -> None:
    # bias before repetition: a biased-positive logit is divided by the penalty, bias included
    logits = torch.tensor([1.0, -1.0, 0.0])
    params = SamplingParams(logit_bias=((1, 3.0),), repetition_penalty=2.0, presence_penalty=0.5, temperature=0.5)
    processed = Sampler(params).process(logits, [1], num_prompt=0)
    # token 1: (-1 + 3) / 2 (repetition) - 0.5 (presence) = 0.5, then / 0.5 (temperature) = 1.0
    torch.testing.assert_close(processed, torch.tensor([2.0, 1.0, 0.0]))


def test_greedy_takes_the_argmax_after_penalties() -> None:
    logits = torch.tensor([2.0, 1.9, 0.0])
    sampler = Sampler(SamplingParams(temperature=0.0, frequency_penalty=0.2))
    assert sampler.sample(logits, [5, 0], num_prompt=1).token_id == 1


def test_logprobs_stay_raw_under_bias() -> None:
    logits = torch.tensor([2.0, 0.0, -1.0])
    token = Sampler(SamplingParams(temperature=0.0, logprobs=1, logit_bias=((2, 100.0),))).sample(logits)
    assert token.token_id == 2
    assert token.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[2]))


def test_keeps_argmax_only_without_processors() -> None:
    assert SamplingParams(temperature=0.0).keeps_argmax
    assert SamplingParams(temperature=0.0, min_p=0.9, top_k=1).keeps_argmax
    for changed in (
        SamplingParams(temperature=0.0, presence_penalty=0.1),
        SamplingParams(temperature=0.0, frequency_penalty=-0.1),
        SamplingParams(temperature=0.0, logit_bias=((1, 1.0),)),
        SamplingParams(temperature=0.0, repetition_penalty=1.1),
        SamplingParams(temperature=0.0, logprobs=1),
        SamplingParams(temperature=0.5),
    ):
        assert not changed.keeps_argmax, changed


def test_build_sampling_applies_defaults_and_sorts_bias() -> None:
    params = build_sampling(logit_bias={7: 1.0, 2: -3.0}, n=4, min_tokens=5, ignore_eos=True)
    assert params.logit_bias == ((2, -3.0), (7, 1.0))
    assert (params.n, params.min_tokens, params.ignore_eos) == (4, 5, True)
    defaults = build_sampling()
    assert (defaults.min_p, defaults.presence_penalty, defaults.frequency_penalty) == (0.0, 0.0, 0.0)
    assert (defaults.logit_bias, defaults.ignore_eos, defaults.min_tokens, defaults.n) == ((), False, 0, 1)


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"min_p": -0.1}, "sampling.min_p"),
        ({"min_p": 1.01}, "sampling.min_p"),
        ({"min_p": math.nan}, "sampling.min_p"),
        ({"presence_penalty": 2.01}, "sampling.presence_penalty"),
        ({"presence_penalty": -2.01}, "sampling.presence_penalty"),
        ({"frequency_penalty": math.inf}, "sampling.frequency_penalty"),
        ({"frequency_penalty": -3.0}, "sampling.frequency_penalty"),
        ({"logit_bias": {5: 100.5}}, "sampling.logit_bias.5"),
        ({"logit_bias": {9: -101.0}}, "sampling.logit_bias.9"),
        ({"logit_bias": {-1: 1.0}}, "sampling.logit_bias.-1"),
        ({"logit_bias": {i: 0.0 for i in range(301)}}, "sampling.logit_bias"),
        ({"min_tokens": -1}, "sampling.min_tokens"),
        ({"min_tokens": 11, "max_tokens": 10}, "sampling.min_tokens"),
        ({"min_tokens": 129}, "sampling.min_tokens"),
        ({"n": 0}, "sampling.n"),
        ({"n": 17}, "sampling.n"),
    ],
)
def test_bad_values_name_the_field(knobs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        build_sampling(**knobs)  # type: ignore[arg-type]
    assert [v.field for v in raised.value.violations] == [field]


@pytest.mark.parametrize(
    "knobs",
    [
        {"min_p": 0.0},
        {"min_p": 1.0},
        {"presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"logit_bias": {i: 100.0 if i % 2 else -100.0 for i in range(300)}},
        {"min_tokens": 10, "max_tokens": 10},
        {"min_tokens": 0},
        {"n": 1},
        {"n": 16},
    ],
)
def test_edge_values_are_accepted(knobs: dict[str, object]) -> None:
    build_sampling(**knobs)  # type: ignore[arg-type]
