"""Domain types of the inference engine: requests in, token chunks and a completion record out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from genmesh.errors import InvalidArgument
from genmesh.response_format import ResponseFormat
from genmesh.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to complete; ``deadline`` is an absolute ``time.monotonic()`` instant (None: no deadline).

    ``truncate_prompt`` keeps the prompt's last tokens when it is too long for the context, instead of
    refusing it. ``rendered``: the prompt is a rendered chat template, which holds its special tokens (BOS)
    already, so none are added when it is encoded.
    """

    request_id: str
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    deadline: float | None = None
    truncate_prompt: bool = False
    rendered: bool = False
    response_format: ResponseFormat | None = None
    """Structure the output must have (constrained decoding); None: free text."""

    def __post_init__(self) -> None:
        if not self.request_id:
            raise InvalidArgument.field("request_id", "must not be empty")
        if self.response_format is not None:  # the format decides where the output ends: only EOS may follow it
            for name in ("min_tokens", "ignore_eos"):
                if getattr(self.sampling, name, 0):
                    raise InvalidArgument.field(f"sampling.{name}", "must be unset with a response_format")


@dataclass(slots=True)
class TokenLogprob:
    """Log-probability of one generated token and the top alternatives as (token id, text, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass(slots=True)
class TokenChunk:
    """Newly generated tokens and the text they complete; ``logprobs`` is empty or aligned with ``token_ids``.

    The text is UTF-8 safe and may lag the ids: a partial character, or text that could begin a stop
    sequence, is held back until resolved; a completed stop sequence is never sent, nor is an EOS token.
    """

    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    index: int = 0
    """Which of the request's ``n`` samples this chunk belongs to."""

    def extend(self, other: TokenChunk) -> None:
        """Append ``other`` to this chunk (used to coalesce chunks a slow consumer has not read yet)."""
        self.token_ids.extend(other.token_ids)
        self.text += other.text
        self.logprobs.extend(other.logprobs)


class FinishReason(StrEnum):
    """Why a generation ended."""

    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Finished:
    """The last item of every generation stream: why it ended, token usage and timings.

    ``completion_tokens`` counts the generated tokens streamed as ``token_ids`` (those of a matched stop
    sequence included; an EOS token is neither streamed nor counted). Timings are milliseconds from the
    request's arrival; ``ttft_ms`` is 0 when no token was produced.
    """

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float
    total_ms: float
    cached_tokens: int = 0
    """Prompt tokens found in the prefix cache instead of being computed."""
    index: int = 0
    """Which of the request's ``n`` samples ended."""


@dataclass(frozen=True, slots=True)
class LoadStats:
    """Engine occupancy, for load balancing: requests generating and waiting, KV cache tokens used/capacity
    (``kv_used_tokens`` = positions in held blocks), the paged cache's blocks, and the prefix-cache hit rate
    (hit tokens over prompt tokens since start)."""

    running: int
    waiting: int
    kv_used_tokens: int
    kv_capacity_tokens: int
    block_size: int = 0
    blocks_used: int = 0
    blocks_free: int = 0
    prefix_hit_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What is being served."""

    name: str
    context_length: int
    vocab_size: int
    dtype: str
    device: str
    eos_token_ids: list[int]
