"""One generation as the engine thread sees it: its tokens, sampler, detokenizer, stop filter and cache row."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tokenizers import Tokenizer

from services.inference.detokenizer import IncrementalDetokenizer, StopSequenceFilter
from services.inference.engine.types import Finished, FinishReason, GenerationRequest, TokenChunk, TokenLogprob
from services.inference.sampler import SampledToken, Sampler

Item = TokenChunk | Finished | BaseException
PostFn = Callable[[Item], None]


def elapsed_ms(start: float, end: float) -> float:
    """Milliseconds from ``start`` to ``end`` (time.monotonic seconds)."""
    return round((end - start) * 1000.0, 3)


class Sequence:
    """The state of one request on the engine thread.

    Its prompt is fed to the model in chunks (``prefilled`` counts what is in the cache), then one token
    per step. Every produced item goes to the consumer through ``post``, which must be thread-safe.
    """

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        max_new: int,
        tokenizer: Tokenizer,
        eos_token_ids: frozenset[int],
        post: PostFn,
        cancel: threading.Event,
    ) -> None:
        self.request = request
        self.prompt_ids = prompt_ids
        self.max_new = max_new
        self.post = post
        self.cancel = cancel
        self.arrival = time.monotonic()
        self.started: float | None = None
        self.first_token_at: float | None = None
        self.row = -1
        self.prefilled = 0
        self.generated = 0
        self.history = list(prompt_ids)
        self.sampler = Sampler(request.sampling)
        self._tokenizer = tokenizer
        self._eos = eos_token_ids
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self._stops = StopSequenceFilter(request.sampling.stop)
        params = request.sampling
        self.plain_greedy = params.greedy and params.repetition_penalty == 1.0 and params.logprobs == 0

    @property
    def prompt_done(self) -> bool:
        """Whether the whole prompt is in the cache."""
        return self.prefilled == len(self.prompt_ids)

    @property
    def cached_tokens(self) -> int:
        """Positions of the cache row this sequence fills."""
        return self.prefilled + max(0, self.generated - 1)

    @property
    def next_token(self) -> int:
        """The last sampled token, which the next decode step feeds."""
        return self.history[-1]

    @property
    def next_position(self) -> int:
        """The position the next decode step writes."""
        return len(self.history) - 1

    def accept(self, token: SampledToken) -> FinishReason | None:
        """Take a sampled token: stream its text, and say why the sequence ends if it does."""
        self.generated += 1
        self.history.append(token.token_id)
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        chunk = TokenChunk([], "")
        reason: FinishReason | None = None
        if token.token_id in self._eos:
            reason = FinishReason.STOP
        else:
            chunk.token_ids.append(token.token_id)
            if token.logprob is not None:
                top = [(i, self._tokenizer.decode([i], skip_special_tokens=False), lp) for i, lp in token.top]
                chunk.logprobs.append(TokenLogprob(token.token_id, token.logprob, top))
            chunk.text = self._stops.feed(self._detok.add(token.token_id))
            if self._stops.stopped:
                reason = FinishReason.STOP_SEQUENCE
            elif self.generated >= self.max_new:
                reason = FinishReason.LENGTH
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            chunk.text += self._stops.feed(self._detok.flush())
            chunk.text += self._stops.flush()
            if self._stops.stopped:
                reason = FinishReason.STOP_SEQUENCE
        if chunk.token_ids or chunk.text:
            self.post(chunk)
        return reason

    def finish(self, reason: FinishReason) -> None:
        """Send the closing record."""
        now = time.monotonic()
        started = self.started if self.started is not None else now
        self.post(
            Finished(
                finish_reason=reason,
                prompt_tokens=len(self.prompt_ids),
                completion_tokens=self.generated - (reason == FinishReason.STOP),
                queue_ms=elapsed_ms(self.arrival, started),
                ttft_ms=elapsed_ms(self.arrival, self.first_token_at) if self.first_token_at is not None else 0.0,
                total_ms=elapsed_ms(self.arrival, now),
            )
        )
