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

    Timings are taken from construction (the request's arrival) to ``started`` (given a cache row), the
    first token and the closing record.
    """

    __slots__ = (
        "_detok",
        "_eos",
        "_stops",
        "_tokenizer",
        "arrival",
        "deliver",
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
    ) -> None:
        params = request.sampling
        self.sampler = Sampler(params)
        # greedy without processors or logprobs: the token is the row's argmax, taken for the batch at once
        self.plain_greedy = params.greedy and params.repetition_penalty == 1.0 and params.logprobs == 0
        self.deliver = deliver
        self.arrival = time.monotonic()
        self.started: float | None = None
        self.first_token_at: float | None = None
        #: Sequences prefilled in the forward pass that gave the first token (0 before it).
        self.prefill_batch = 0
        self._tokenizer = tokenizer
        self._eos = eos_token_ids
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self._stops = StopSequenceFilter(params.stop)

    def accept(self, token: SampledToken, at_max_tokens: bool) -> FinishReason | None:
        """Stream a sampled token's text, and say why the sequence ends if it does.

        An EOS token ends with STOP and is not streamed; a completed stop sequence ends with STOP_SEQUENCE
        (also when found in the text held back at the end); ``at_max_tokens`` otherwise ends with LENGTH.
        """
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
            elif at_max_tokens:
                reason = FinishReason.LENGTH
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            chunk.text += self._stops.feed(self._detok.flush())
            chunk.text += self._stops.flush()
            if self._stops.stopped:
                reason = FinishReason.STOP_SEQUENCE
        if chunk.token_ids or chunk.text:
            self.deliver(chunk)
        return reason

    def finish(self, seq: Sequence) -> Finished | None:
        """Send the closing record of a finished ``seq``: its error (None returned), or a Finished with usage and
        timings (returned)."""
        if seq.error is not None:
            self.deliver(seq.error)
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
        """Record when ``seqs`` got their cache rows."""
        for seq in seqs:
            out = self._outputs[seq.seq_id]
            out.started = now
            if self._metrics is not None:
                self._metrics.queued(now - out.arrival)

    def process(
        self, seqs: list[Sequence], logits: torch.Tensor, prefill_batch: int = 0
    ) -> list[tuple[Sequence, FinishReason]]:
        """Sample one token per sequence from ``logits`` [len(seqs), vocab], record it, stream its text.

        The plain greedy sequences share one argmax over the batch. Returns the sequences the token ends,
        with why, in ``seqs`` order. ``prefill_batch``: the sequences the prefill pass of these logits fed.
        """
        outputs = self._outputs
        best: list[int] | None = None
        ended: list[tuple[Sequence, FinishReason]] = []
        for i, seq in enumerate(seqs):
            out = outputs[seq.seq_id]
            if out.plain_greedy:
                if best is None:
                    best = logits.argmax(dim=-1).tolist()
                token = SampledToken(best[i])
            else:
                token = out.sampler.sample(logits[i], seq.token_ids)
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
            elif seq.error is not None:
                self._metrics.failed(seq.error, seq.num_generated)
