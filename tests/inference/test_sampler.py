"""Tests of the Sampler: greedy, seeded draws, top-k/top-p, repetition penalty and logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from genmesh.sampling import SamplingParams
from services.inference.sampler import Sampler


def logits_for(seed: int, vocab: int = 1000) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 2


def draws(params: SamplingParams, n: int = 30, vocab: int = 1000) -> list[int]:
    sampler = Sampler(params)
    logits = torch.zeros(vocab)  # flat: every token equally likely
    return [sampler.sample(logits).token_id for _ in range(n)]


def test_greedy_is_argmax() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0))
    for seed in range(5):
        logits = logits_for(seed)
        assert sampler.sample(logits).token_id == int(logits.argmax())


def test_same_seed_reproduces_and_other_seeds_differ() -> None:
    first = draws(SamplingParams(seed=1234))
    assert draws(SamplingParams(seed=1234)) == first
    assert draws(SamplingParams(seed=1235)) != first
    assert draws(SamplingParams()) != draws(SamplingParams())  # unseeded requests differ


def test_top_k_one_equals_greedy() -> None:
    greedy = Sampler(SamplingParams(temperature=0.0))
    top1 = Sampler(SamplingParams(temperature=1.5, top_k=1, seed=7))
    for seed in range(10):
        logits = logits_for(seed)
        assert top1.sample(logits).token_id == greedy.sample(logits).token_id


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    top_k = Sampler(SamplingParams(top_k=2, seed=0))
    assert {top_k.sample(logits).token_id for _ in range(200)} == {0, 1}
    top_p = Sampler(SamplingParams(top_p=0.7, seed=0))
    assert {top_p.sample(logits).token_id for _ in range(200)} == {0, 1}
    top_p_small = Sampler(SamplingParams(top_p=0.1, seed=0))
    assert {top_p_small.sample(logits).token_id for _ in range(50)} == {0}
    processed = Sampler(SamplingParams(top_p=0.85)).process(logits)
    assert torch.isinf(processed[3]) and torch.isfinite(processed[:3]).all()


def test_temperature_scales_the_logits() -> None:
    logits = torch.tensor([1.0, 2.0, -3.0])
    torch.testing.assert_close(Sampler(SamplingParams(temperature=0.5)).process(logits), logits / 0.5)
    low = Sampler(SamplingParams(temperature=0.05, seed=3))
    assert all(low.sample(logits).token_id == 1 for _ in range(50))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    processed = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0)).process(logits, [0, 1, 1, 0])
    torch.testing.assert_close(processed, torch.tensor([1.0, -4.0, 1.0, 0.5]))
    assert Sampler(SamplingParams(temperature=0.0)).sample(torch.tensor([2.0, 1.5]), [0]).token_id == 0
    penalised = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0))
    assert penalised.sample(torch.tensor([2.0, 1.5]), [0]).token_id == 1
    assert penalised.sample(torch.tensor([2.0, 1.5]), torch.tensor([5, 1])).token_id == 0  # 5 is out of range


def test_logprobs_are_raw_log_softmax_with_sorted_top_n() -> None:
    logits = logits_for(11, vocab=50)
    raw = torch.log_softmax(logits, dim=-1)
    token = Sampler(SamplingParams(temperature=0.7, top_k=5, logprobs=3, seed=2)).sample(logits)
    assert token.logprob == pytest.approx(float(raw[token.token_id]))
    assert [i for i, _ in token.top] == raw.topk(3).indices.tolist()
    values = [v for _, v in token.top]
    assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    assert math.isclose(sum(math.exp(v) for v in raw.tolist()), 1.0, rel_tol=1e-5)
    plain = Sampler(SamplingParams(temperature=0.0)).sample(logits)
    assert plain.logprob is None and plain.top == []


def test_sample_rejects_batched_logits() -> None:
    with pytest.raises(ValueError, match="vocab"):
        Sampler(SamplingParams()).sample(torch.zeros(2, 10))
