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
    """Queued for a cache row."""
    PREFILLING = "prefilling"
    """Holds a cache row; its prompt is being fed in chunks."""
    DECODING = "decoding"
    """Its whole prompt is cached; it gets one token per step."""
    FINISHED = "finished"
    """Done: ``finish_reason`` says why, or ``error`` what went wrong (then there is no reason)."""


@dataclass(slots=True, eq=False)
class Sequence:
    """Status and token ids of one generation; compared and hashed by identity.

    ``token_ids`` is the prompt followed by the generated tokens. ``prefilled`` counts the prompt tokens
    in the cache, ``row`` is the cache row held (-1: none). ``abort_requested`` is set from the event
    loop (through ``Scheduler.abort``) and acted on at the next step.
    """

    request_id: str
    prompt_ids: list[int]
    max_new: int
    """Most tokens to generate (the request's max_tokens, clipped to the room left in the context)."""
    deadline: float | None = None
    """Absolute ``time.monotonic()`` instant; None: no deadline."""
    seq_id: int = field(default_factory=lambda: next(_ids), init=False)
    status: SequenceStatus = field(default=SequenceStatus.WAITING, init=False)
    token_ids: list[int] = field(init=False)
    num_generated: int = field(default=0, init=False)
    prefilled: int = field(default=0, init=False)
    row: int = field(default=-1, init=False)
    abort_requested: bool = field(default=False, init=False)
    finish_reason: FinishReason | None = field(default=None, init=False)
    error: Exception | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError(f"sequence {self.request_id}: the prompt must hold at least one token")
        if self.max_new < 1:
            raise ValueError(f"sequence {self.request_id}: max_new must be at least 1, got {self.max_new}")
        self.token_ids = list(self.prompt_ids)

    @property
    def num_prompt_tokens(self) -> int:
        """Length of the prompt."""
        return len(self.prompt_ids)

    @property
    def prompt_done(self) -> bool:
        """Whether the whole prompt is in the cache."""
        return self.prefilled == len(self.prompt_ids)

    @property
    def at_max_tokens(self) -> bool:
        """Whether ``max_new`` tokens have been generated."""
        return self.num_generated >= self.max_new

    @property
    def cached_tokens(self) -> int:
        """Positions of the cache row this sequence fills (the last generated token is fed next step)."""
        return self.prefilled + max(0, self.num_generated - 1)

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
