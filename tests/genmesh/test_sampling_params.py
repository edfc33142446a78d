"""Sampling knobs: documented defaults for unset knobs, every bad knob named at once."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from genmesh.convert import sampling_from_proto
from genmesh.errors import InvalidArgument
from genmesh.sampling import DEFAULT_MAX_TOKENS, SamplingParams, build_sampling
from genmesh.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = {
    "max_tokens": 128, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "logprobs": 0,
    "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_tokens": 0, "n": 1,
}  # fmt: skip
"""The defaults the README and common.proto promise for unset knobs."""


def _proto_defaults() -> dict[str, float]:
    """``Default X`` from the doc comment of each field of common.proto's SamplingParams."""
    proto = (ROOT / "protos" / "genmesh" / "v1" / "common.proto").read_text()
    body = proto[proto.index("message SamplingParams {") :].split("\n}", 1)[0]
    found: dict[str, float] = {}
    comment = ""
    for line in body.splitlines()[1:]:
        line = line.strip()
        if line.startswith("//"):
            comment += " " + line[2:]
            continue
        field = re.match(r"(?:optional |repeated )?\w+ (\w+) = \d+;", line)
        default = re.search(r"Default (-?[0-9.]+)", comment)
        if field and default:
            found[field.group(1)] = float(default.group(1))
        comment = ""
    return found


def test_documented_defaults_apply_to_unset_knobs() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "unset means the documented server default (`max_tokens` 128, `temperature` 1.0, …)" in readme
    assert _proto_defaults() == DOCUMENTED
    params = sampling_from_proto(common_pb2.SamplingParams())
    assert {name: getattr(params, name) for name in DOCUMENTED} == DOCUMENTED
    assert (params.stop, params.seed, params.greedy) == ((), None, False)
    assert (params.logit_bias, params.ignore_eos) == ((), False)


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
