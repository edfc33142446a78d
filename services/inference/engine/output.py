"""The output side of generation: sampling, detokenizing, stop matching, timings and delivery to the consumer.

The scheduler decides what runs; this side turns each run's logits into tokens, says which sequences
they end and why, and sends text and closing records out. It records each token in its ``Sequence``
(the token bookkeeping) and keeps everything else per request in a ``SequenceOutput``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer

from services.inference.constraints import MaskPrefetcher, TokenConstraint, apply_bitmask, fill_bitmask
from services.inference.detokenizer import IncrementalDetokenizer, StopSequenceFilter
from services.inference.engine.sequence import Sequence
from services.inference.engine.stream import Item
from services.inference.engine.types import Finished, FinishReason, GenerationRequest, TokenChunk, TokenLogprob
from services.inference.sampler import SampledToken, Sampler

if TYPE_CHECKING:
    from services.inference.metrics import InferenceMetrics

Deliver = Callable[[Item], None]
"""Hands one item to the consumer; must be thread-safe (it runs on the engine thread)."""


def elapsed_ms(start: float, end: float) -> float:
    """Milliseconds from ``start`` to ``end`` (time.monotonic seconds)."""
    return round((end - start) * 1000.0, 3)


class SequenceOutput:
    """One request's output: its sampler, detokenizer, stop filter, timings and where items go.

    Timings are taken from construction (the request's arrival) to ``started`` (admitted, given its cache blocks), the
    first token and the closing record.
    """

    __slots__ = (
        "_count",
        "_detok",
        "_eos",
        "_min_tokens",
        "_stops",
        "_tokenizer",
        "arrival",
        "constraint",
        "deliver",
        "failure",
        "first_token_at",
        "plain_greedy",
        "prefill_batch",
        "sampler",
        "started",
    )

    def __init__(
        self,
        request: GenerationRequest,
        prompt_ids: list[int],
        tokenizer: Tokenizer,
        eos_token_ids: frozenset[int],
        deliver: Deliver,
        constraint: TokenConstraint | None = None,
    ) -> None:
        params = request.sampling
        #: The response format's matcher (None: free text); ``failure`` ends the sequence when it breaks.
        self.constraint = constraint
        self.failure: Exception | None = None
        self.sampler = Sampler(params, eos_token_ids)
        # greedy, no processor moves the argmax, no logprobs: the token is the row's argmax, taken for the batch
        self.plain_greedy = params.keeps_argmax and params.min_tokens == 0 and constraint is None
        self.deliver = deliver
        self.arrival = time.monotonic()
        self.started: float | None = None
        self.first_token_at: float | None = None
        #: Sequences prefilled in the forward pass that gave the first token (0 before it).
        self.prefill_batch = 0
        self._tokenizer = tokenizer
        # ignore_eos: EOS ids are ordinary tokens (streamed, counted; their text is empty)
        self._eos = frozenset() if params.ignore_eos else eos_token_ids
        self._min_tokens = params.min_tokens
        self._count = 0
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self._stops = StopSequenceFilter(params.stop)

    def accept(self, token: SampledToken, at_max_tokens: bool) -> FinishReason | None:
        """Stream a sampled token's text, and say why the sequence ends if it does.

        An EOS token ends with STOP and is not streamed; a completed stop sequence ends with STOP_SEQUENCE
        (also when found in the text held back at the end); ``at_max_tokens`` otherwise ends with LENGTH.
        With ``min_tokens``, neither applies to the first ``min_tokens - 1`` tokens: the sampler keeps EOS
        out, and their text is streamed without looking for stop sequences (which are matched only in the
        text of the ``min_tokens``-th token on). With ``ignore_eos`` an EOS token is an ordinary one.
        """
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self._count += 1
        chunk = TokenChunk([], "")
        reason: FinishReason | None = None
        if token.token_id in self._eos and self._count > self._min_tokens:
            reason = FinishReason.STOP
        else:
            chunk.token_ids.append(token.token_id)
            if token.logprob is not None:
                top = [(i, self._tokenizer.decode([i], skip_special_tokens=False), lp) for i, lp in token.top]
                chunk.logprobs.append(TokenLogprob(token.token_id, token.logprob, top))
            chunk.text = self._release(self._detok.add(token.token_id))
            if self._stops.stopped:
                reason = FinishReason.STOP_SEQUENCE
            elif at_max_tokens:
                reason = FinishReason.LENGTH
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            chunk.text += self._release(self._detok.flush())
            chunk.text += self._stops.flush()
            if self._stops.stopped:
                reason = FinishReason.STOP_SEQUENCE
        if chunk.token_ids or chunk.text:
            self.deliver(chunk)
        return reason

    def _release(self, text: str) -> str:
        """``text`` through the stop filter, or as is before the ``min_tokens``-th token."""
        return text if self._count < self._min_tokens else self._stops.feed(text)

    def finish(self, seq: Sequence) -> Finished | None:
        """Send the closing record of a finished ``seq``: its error (None returned), or a Finished with usage and
        timings (returned)."""
        if (failure := seq.error or self.failure) is not None:
            self.deliver(failure)
            return None
        if seq.finish_reason is None:
            raise ValueError(f"sequence {seq.request_id} has not finished")
        now = time.monotonic()
        started = self.started if self.started is not None else now
        reason = seq.finish_reason
        done = Finished(
            finish_reason=reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_generated - (reason == FinishReason.STOP),
            queue_ms=elapsed_ms(self.arrival, started),
            ttft_ms=elapsed_ms(self.arrival, self.first_token_at) if self.first_token_at is not None else 0.0,
            total_ms=elapsed_ms(self.arrival, now),
            cached_tokens=seq.prefix_hit_tokens,
        )
        self.deliver(done)
        return done


class OutputProcessor:
    """The outputs of the sequences in flight, by ``Sequence.seq_id``.

    ``add`` and ``discard`` run on the event loop (before the scheduler sees the sequence, and when it
    refused it); everything else on the engine thread. Queue times, first tokens and endings go to ``metrics``.
    """

    def __init__(self, metrics: InferenceMetrics | None = None) -> None:
        self._outputs: dict[int, SequenceOutput] = {}
        self._metrics = metrics
        self._masks = MaskPrefetcher()

    def __len__(self) -> int:
        return len(self._outputs)

    def add(self, seq: Sequence, output: SequenceOutput) -> None:
        """Register ``seq``'s output."""
        if seq.seq_id in self._outputs:
            raise ValueError(f"sequence {seq.request_id} already has an output")
        self._outputs[seq.seq_id] = output

    def discard(self, seq: Sequence) -> None:
        """Forget ``seq``'s output without sending anything (the sequence never ran)."""
        self._outputs.pop(seq.seq_id, None)

    def mark_started(self, seqs: Iterable[Sequence], now: float) -> None:
        """Record when ``seqs`` were admitted (got their cache blocks)."""
        for seq in seqs:
            out = self._outputs[seq.seq_id]
            out.started = now
            if self._metrics is not None:
                self._metrics.queued(now - out.arrival)

    def process(
        self, seqs: list[Sequence], logits: torch.Tensor, prefill_batch: int = 0
    ) -> list[tuple[Sequence, FinishReason]]:
        """Sample one token per sequence from ``logits`` [len(seqs), vocab], record it, stream its text.

        Rows of sequences with a response format are masked to their matchers' tokens first (a broken matcher ends
        its sequence with an error; a row whose logprobs are asked is copied before, for raw logprobs); each drawn
        token advances its matcher. The plain greedy sequences share one argmax over the batch. Returns the
        sequences the token ends, with why, in ``seqs`` order. ``prefill_batch``: the sequences the prefill pass of
        these logits fed.
        """
        outputs = self._outputs
        best: list[int] | None = None
        ended: list[tuple[Sequence, FinishReason]] = []
        unmasked = {
            i: logits[i].clone()
            for i, seq in enumerate(seqs)
            if outputs[seq.seq_id].constraint is not None and outputs[seq.seq_id].sampler.params.logprobs > 0
        }
        self._constrain(seqs, logits)
        for i, seq in enumerate(seqs):
            out = outputs[seq.seq_id]
            if out.failure is not None:
                ended.append((seq, FinishReason.STOP))  # its closing record is the failure
                continue
            if out.plain_greedy:
                if best is None:
                    best = logits.argmax(dim=-1).tolist()
                token = SampledToken(best[i])
            else:
                token = out.sampler.sample(logits[i], seq.token_ids, seq.num_prompt_tokens, unmasked.get(i))
            if out.constraint is not None and not out.constraint.advance(token.token_id):
                out.failure = RuntimeError(f"constrained decoding failed: {out.constraint.error}")
                ended.append((seq, FinishReason.STOP))
                continue
            seq.append_token(token.token_id)
            first = out.first_token_at is None
            if first:
                out.prefill_batch = prefill_batch
            reason = out.accept(token, seq.at_max_tokens)
            if first and self._metrics is not None and out.first_token_at is not None:
                self._metrics.first_token(out.first_token_at - out.arrival, seq.num_prompt_tokens)
            if reason is not None:
                ended.append((seq, reason))
        return ended

    def prefetch_masks(self, seqs: list[Sequence]) -> None:
        """Start filling the next-token masks of the constrained ``seqs`` on a worker (during their forward pass)."""
        outputs = [self._outputs.get(seq.seq_id) for seq in seqs]
        found = [(seq.seq_id, out.constraint) for seq, out in zip(seqs, outputs, strict=True) if out and out.constraint]
        if found:
            constraints = [c for _, c in found]
            self._masks.start(tuple(k for k, _ in found), constraints, constraints[0].vocab_size)

    def _constrain(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Mask ``logits`` rows of the constrained ``seqs`` to their matchers' allowed tokens (-inf elsewhere).

        Uses the masks ``prefetch_masks`` started for this batch, else fills them now. A matcher in error, or
        one that allows nothing, gives its sequence a ``failure``.
        """
        rows = [i for i, seq in enumerate(seqs) if self._outputs[seq.seq_id].constraint is not None]
        found = [self._outputs[seqs[i].seq_id] for i in rows]
        mask = self._masks.take(tuple(seqs[i].seq_id for i in rows))
        if not rows:
            return
        constraints = [out.constraint for out in found if out.constraint is not None]
        if mask is None:
            mask = fill_bitmask(constraints, constraints[0].vocab_size)
        empty = (mask == 0).all(dim=1).tolist()
        for out, constraint, none_allowed in zip(found, constraints, empty, strict=True):
            if constraint.error is not None or none_allowed:
                out.failure = RuntimeError(f"constrained decoding failed: {constraint.error or 'no token allowed'}")
        apply_bitmask(logits, rows, mask)

    def finish(self, seqs: Iterable[Sequence]) -> None:
        """Send the closing records of finished ``seqs`` and forget their outputs."""
        for seq in seqs:
            out = self._outputs.pop(seq.seq_id, None)
            if out is None:
                continue
            done = out.finish(seq)
            if self._metrics is None:
                continue
            if done is not None:
                self._metrics.finished(done, seq.num_generated)
            elif (failure := seq.error or out.failure) is not None:
                self._metrics.failed(failure, seq.num_generated)
