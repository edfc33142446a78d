"""Sampling parameters: server-side defaults, limits and validation shared by gateway and inference."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from genmesh.errors import FieldViolation, InvalidArgument

DEFAULT_MAX_TOKENS = 128
MAX_TOKENS_LIMIT = 4096
TEMPERATURE_LIMIT = 2.0
REPETITION_PENALTY_LIMIT = 10.0
MAX_STOP_SEQUENCES = 8
MAX_STOP_LENGTH = 256
MAX_LOGPROBS = 20
MAX_SEED = 2**63 - 1
PENALTY_LIMIT = 2.0
MAX_LOGIT_BIAS_ENTRIES = 300
LOGIT_BIAS_LIMIT = 100.0
MAX_N = 16


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Validated sampling knobs of one request; defaults mirror the documentation in common.proto."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs, ids ascending; ids are checked against the vocabulary by inference."""
    ignore_eos: bool = False
    min_tokens: int = 0
    n: int = 1

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax decoding."""
        return self.temperature == 0.0

    @property
    def keeps_argmax(self) -> bool:
        """No processor can move the argmax: greedy, no penalty, bias or logprobs (min_tokens/EOS aside)."""
        return (
            self.greedy
            and self.repetition_penalty == 1.0
            and self.presence_penalty == 0.0
            and self.frequency_penalty == 0.0
            and not self.logit_bias
            and self.logprobs == 0
        )


def _finite_in(value: float, low: float, high: float, low_open: bool = False) -> bool:
    if math.isnan(value) or math.isinf(value):
        return False
    return (value > low if low_open else value >= low) and value <= high


def build_sampling(
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    stop: list[str] | tuple[str, ...] = (),
    seed: int | None = None,
    logprobs: int | None = None,
    min_p: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    logit_bias: Mapping[int, float] | None = None,
    ignore_eos: bool = False,
    min_tokens: int | None = None,
    n: int | None = None,
    prefix: str = "sampling",
) -> SamplingParams:
    """Apply defaults to the knobs that are set and validate them.

    Raises InvalidArgument naming every bad field as ``{prefix}.{name}``.
    """
    bad: list[FieldViolation] = []

    def check(ok: bool, name: str, description: str) -> None:
        if not ok:
            bad.append(FieldViolation(f"{prefix}.{name}", description))

    if max_tokens is not None:
        check(1 <= max_tokens <= MAX_TOKENS_LIMIT, "max_tokens", f"must be between 1 and {MAX_TOKENS_LIMIT}")
    if temperature is not None:
        check(
            _finite_in(temperature, 0.0, TEMPERATURE_LIMIT), "temperature", f"must be between 0 and {TEMPERATURE_LIMIT}"
        )
    if top_p is not None:
        check(_finite_in(top_p, 0.0, 1.0, low_open=True), "top_p", "must be in (0, 1]")
    if top_k is not None:
        check(top_k >= 0, "top_k", "must be 0 (off) or positive")
    if repetition_penalty is not None:
        check(
            _finite_in(repetition_penalty, 0.0, REPETITION_PENALTY_LIMIT, low_open=True),
            "repetition_penalty",
            f"must be in (0, {REPETITION_PENALTY_LIMIT}]",
        )
    check(len(stop) <= MAX_STOP_SEQUENCES, "stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for i, s in enumerate(stop):
        check(0 < len(s) <= MAX_STOP_LENGTH, f"stop[{i}]", f"must be 1 to {MAX_STOP_LENGTH} characters")
    if seed is not None:
        check(0 <= seed <= MAX_SEED, "seed", f"must be between 0 and {MAX_SEED}")
    if logprobs is not None:
        check(0 <= logprobs <= MAX_LOGPROBS, "logprobs", f"must be between 0 and {MAX_LOGPROBS}")
    if min_p is not None:
        check(_finite_in(min_p, 0.0, 1.0), "min_p", "must be between 0 and 1")
    for name, penalty in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if penalty is not None:
            check(_finite_in(penalty, -PENALTY_LIMIT, PENALTY_LIMIT), name, f"must be between -2 and {PENALTY_LIMIT:g}")
    bias = dict(logit_bias or {})
    check(len(bias) <= MAX_LOGIT_BIAS_ENTRIES, "logit_bias", f"at most {MAX_LOGIT_BIAS_ENTRIES} entries")
    for token_id, value in sorted(bias.items()):
        check(token_id >= 0, f"logit_bias.{token_id}", "token ids must not be negative")
        check(
            _finite_in(value, -LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT),
            f"logit_bias.{token_id}",
            f"must be between -{LOGIT_BIAS_LIMIT:g} and {LOGIT_BIAS_LIMIT:g}",
        )
    limit = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if min_tokens is not None:
        check(0 <= min_tokens <= limit, "min_tokens", f"must be between 0 and max_tokens ({limit})")
    if n is not None:
        check(1 <= n <= MAX_N, "n", f"must be between 1 and {MAX_N}")
    if bad:
        raise InvalidArgument(bad)
    defaults = SamplingParams()
    return SamplingParams(
        max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
        repetition_penalty=defaults.repetition_penalty if repetition_penalty is None else repetition_penalty,
        stop=tuple(stop),
        seed=seed,
        logprobs=defaults.logprobs if logprobs is None else logprobs,
        min_p=defaults.min_p if min_p is None else min_p,
        presence_penalty=defaults.presence_penalty if presence_penalty is None else presence_penalty,
        frequency_penalty=defaults.frequency_penalty if frequency_penalty is None else frequency_penalty,
        logit_bias=tuple(sorted(bias.items())),
        ignore_eos=ignore_eos,
        min_tokens=defaults.min_tokens if min_tokens is None else min_tokens,
        n=defaults.n if n is None else n,
    )


def check_logit_bias_vocab(params: SamplingParams, vocab_size: int, prefix: str = "sampling") -> None:
    """Refuse logit_bias ids outside the vocabulary (InvalidArgument naming ``{prefix}.logit_bias.<id>``)."""
    bad = [
        FieldViolation(f"{prefix}.logit_bias.{token_id}", f"token id must be below the vocabulary size {vocab_size}")
        for token_id, _ in params.logit_bias
        if token_id >= vocab_size
    ]
    if bad:
        raise InvalidArgument(bad)
