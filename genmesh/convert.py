"""Protobuf ↔ domain conversions shared by several services (the edge, never the core)."""

from __future__ import annotations

from genmesh.sampling import SamplingParams, build_sampling
from genmesh.v1 import common_pb2


def sampling_from_proto(message: common_pb2.SamplingParams, prefix: str = "sampling") -> SamplingParams:
    """Validated sampling parameters, defaults applied to the unset knobs."""

    def opt(name: str) -> float | int | None:
        return getattr(message, name) if message.HasField(name) else None  # type: ignore[arg-type]

    return build_sampling(
        max_tokens=opt("max_tokens"),  # type: ignore[arg-type]
        temperature=opt("temperature"),
        top_p=opt("top_p"),
        top_k=opt("top_k"),  # type: ignore[arg-type]
        repetition_penalty=opt("repetition_penalty"),
        stop=list(message.stop),
        seed=opt("seed"),  # type: ignore[arg-type]
        logprobs=opt("logprobs"),  # type: ignore[arg-type]
        min_p=opt("min_p"),
        presence_penalty=opt("presence_penalty"),
        frequency_penalty=opt("frequency_penalty"),
        logit_bias=dict(message.logit_bias),
        ignore_eos=message.ignore_eos,
        min_tokens=opt("min_tokens"),  # type: ignore[arg-type]
        n=opt("n"),  # type: ignore[arg-type]
        prefix=prefix,
    )
