"""Sampling knobs: documented defaults for unset knobs, every bad knob named at once."""

from __future__ import annotations

import math

import pytest

from genmesh.convert import sampling_from_proto
from genmesh.errors import InvalidArgument
from genmesh.sampling import DEFAULT_MAX_TOKENS, SamplingParams, build_sampling
from genmesh.v1 import common_pb2


def test_unset_knobs_get_defaults_and_zero_is_not_unset() -> None:
    assert sampling_from_proto(common_pb2.SamplingParams()) == SamplingParams()
    params = sampling_from_proto(common_pb2.SamplingParams(temperature=0.0, top_k=0))
    assert params.temperature == 0.0 and params.greedy
    assert params.max_tokens == DEFAULT_MAX_TOKENS


def test_all_bad_fields_are_reported_together() -> None:
    with pytest.raises(InvalidArgument) as caught:
        build_sampling(max_tokens=0, temperature=math.nan, top_p=1.5, top_k=-1, repetition_penalty=0.0, logprobs=21)
    assert [v.field for v in caught.value.violations] == [
        "sampling.max_tokens",
        "sampling.temperature",
        "sampling.top_p",
        "sampling.top_k",
        "sampling.repetition_penalty",
        "sampling.logprobs",
    ]


def test_stop_sequences_are_bounded() -> None:
    with pytest.raises(InvalidArgument) as caught:
        build_sampling(stop=["ok", ""] + ["x"] * 8)
    assert {v.field for v in caught.value.violations} == {"sampling.stop", "sampling.stop[1]"}
    assert build_sampling(stop=["\n\n"]).stop == ("\n\n",)
