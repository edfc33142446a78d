"""One request as the scheduler sees it: its status and its token bookkeeping.

Sampling, detokenizing, stop sequences, timings and delivery are the output side's
(``output.SequenceOutput``); a ``Sequence`` knows only token ids and where they are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

from services.inference.engine.types import FinishReason

_ids = itertools.count()


class SequenceStatus(Enum):
    """Where a sequence is in its life; only the scheduler moves it on.

    WAITING → PREFILLING → DECODING → FINISHED, and from any of them straight to FINISHED (cancelled,
    past its deadline, failed, or finished by its first token).
    """

    WAITING = "waiting"
    """Queued for cache blocks (new, or preempted and to be recomputed)."""
    PREFILLING = "prefilling"
    """Holds cache blocks; its prompt (after a preemption: all its tokens but the last) is fed in chunks."""
    DECODING = "decoding"
    """Its whole prompt is cached; it gets one token per step."""
    FINISHED = "finished"
    """Done: ``finish_reason`` says why, or ``error`` what went wrong (then there is no reason)."""


@dataclass(slots=True, eq=False)
class Sequence:
    """Status and token ids of one generation; compared and hashed by identity.

    ``token_ids`` is the prompt followed by the generated tokens. ``prefilled`` counts the tokens fed by
    prefill (or found in the prefix cache), up to ``prefill_target``: the prompt, or after a preemption every
    token but the last, recomputed without sampling. ``block_table`` lists the cache blocks held, in position
    order; ``hashed`` how many of them are registered in the prefix cache (under ``block_keys``).
    ``abort_requested`` is set from the event loop (through ``Scheduler.abort``) and acted on at the next step.
    """

    request_id: str
    prompt_ids: list[int]
    max_new: int
    """Most tokens to generate (the request's max_tokens, clipped to the room left in the context)."""
    deadline: float | None = None
    """Absolute ``time.monotonic()`` instant; None: no deadline."""
    after: Sequence | None = None
    """Sample 0 of the same request (n > 1): this one is admitted once that one's prompt is cached, to share it."""
    seq_id: int = field(default_factory=lambda: next(_ids), init=False)
    status: SequenceStatus = field(default=SequenceStatus.WAITING, init=False)
    token_ids: list[int] = field(init=False)
    num_generated: int = field(default=0, init=False)
    prefilled: int = field(default=0, init=False)
    prefill_target: int = field(init=False)
    block_table: list[int] = field(default_factory=list, init=False)
    hashed: int = field(default=0, init=False)
    block_keys: list[bytes] = field(default_factory=list, init=False)
    """Prefix keys of its first full blocks, as far as lookup and registration have needed them (``PagedKVCache``)."""
    prefix_hit_tokens: int = field(default=0, init=False)
    """Prompt tokens found in the prefix cache at first admission (reported as usage's cached_tokens)."""
    preemptions: int = field(default=0, init=False)
    abort_requested: bool = field(default=False, init=False)
    finish_reason: FinishReason | None = field(default=None, init=False)
    error: Exception | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError(f"sequence {self.request_id}: the prompt must hold at least one token")
        if self.max_new < 1:
            raise ValueError(f"sequence {self.request_id}: max_new must be at least 1, got {self.max_new}")
        self.token_ids = list(self.prompt_ids)
        self.prefill_target = len(self.prompt_ids)

    @property
    def num_prompt_tokens(self) -> int:
        """Length of the prompt."""
        return len(self.prompt_ids)

    @property
    def prompt_done(self) -> bool:
        """Whether prefill is over (the prompt, or after a preemption all but the last token, is cached)."""
        return self.prefilled >= self.prefill_target

    @property
    def resuming(self) -> bool:
        """Whether this is a preempted sequence being recomputed (its prefill samples nothing)."""
        return self.num_generated > 0

    @property
    def at_max_tokens(self) -> bool:
        """Whether ``max_new`` tokens have been generated."""
        return self.num_generated >= self.max_new

    @property
    def cached_tokens(self) -> int:
        """Positions this sequence fills in the cache (the last generated token is fed next step)."""
        if self.num_generated and self.prompt_done:
            return len(self.token_ids) - 1
        return self.prefilled

    @property
    def next_token(self) -> int:
        """The last token, which the next decode step feeds."""
        return self.token_ids[-1]

    @property
    def next_position(self) -> int:
        """The position the next decode step writes."""
        return len(self.token_ids) - 1

    @property
    def is_finished(self) -> bool:
        """Whether the sequence has ended."""
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        """Record one generated token."""
        self.token_ids.append(token_id)
        self.num_generated += 1
