"""Turn a sequence's last-position logits into its next token under SamplingParams."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from genmesh.sampling import SamplingParams


@dataclass(slots=True)
class SampledToken:
    """The chosen token, its log-probability and the top-n alternatives (when logprobs were asked for)."""

    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


class Sampler:
    """Per-request sampler: processors in vLLM / Hugging Face order, then argmax or a seeded draw.

    Order: ``logit_bias`` (added), the end-of-sequence mask (EOS ids at -inf while the output holds fewer
    than ``min_tokens`` tokens), repetition penalty (over prompt and generated ids; positive logits
    divided, negative multiplied), presence and frequency penalties (OpenAI's: over generated ids only,
    ``presence`` once per distinct token plus ``frequency`` times its count subtracted), temperature,
    top-k, top-p, min-p (tokens whose probability is below ``min_p`` times the top one's dropped).
    Temperature 0 takes the argmax after the penalties. Each sampler owns a ``torch.Generator`` seeded
    from ``params.seed`` (randomly when unset), so the same seed and prompt reproduce the same tokens.
    Bias ids outside the vocabulary are ignored here (the server refuses them).

    Reported logprobs are *raw*: ``log_softmax`` of the model's unprocessed logits, so they stay
    meaningful under greedy decoding and truncation (a processed distribution would give the chosen
    greedy token probability 1). When ``logits`` were masked first (a response format), ``sample`` is
    given the unmasked row as ``raw_logits`` for them.
    """

    def __init__(self, params: SamplingParams, eos_token_ids: Iterable[int] = ()) -> None:
        self.params = params
        self._eos = sorted(set(eos_token_ids)) if params.min_tokens > 0 else []
        self._generator: torch.Generator | None = None

    def _generator_for(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            generator = torch.Generator(device=device)
            if self.params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.params.seed)
            self._generator = generator
        return self._generator

    def process(
        self, logits: torch.Tensor, history: Sequence[int] | torch.Tensor = (), num_prompt: int = 0
    ) -> torch.Tensor:
        """The processed float32 logits [vocab] that the draw uses (filtered tokens are -inf).

        ``history``: the prompt then the generated ids; its first ``num_prompt`` ids are the prompt.
        """
        p = self.params
        scores = logits.to(torch.float32).clone()
        vocab = scores.numel()
        if p.logit_bias:
            pairs = [(i, b) for i, b in p.logit_bias if i < vocab]
            if pairs:
                ids = torch.tensor([i for i, _ in pairs], dtype=torch.long, device=scores.device)
                scores[ids] += torch.tensor([b for _, b in pairs], dtype=torch.float32, device=scores.device)
        if self._eos and len(history) - num_prompt < p.min_tokens:
            scores[[i for i in self._eos if i < vocab]] = float("-inf")
        if p.repetition_penalty != 1.0 and len(history) > 0:
            ids = torch.as_tensor(history, dtype=torch.long, device=scores.device)
            ids = torch.unique(ids[(ids >= 0) & (ids < vocab)])
            picked = scores[ids]
            scores[ids] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
        if (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0) and len(history) > num_prompt:
            out = torch.as_tensor(history[num_prompt:], dtype=torch.long, device=scores.device)
            counts = torch.bincount(out[(out >= 0) & (out < vocab)], minlength=vocab).to(torch.float32)
            scores -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(torch.float32)
        if p.greedy:
            return scores
        if p.temperature != 1.0:
            scores = scores / p.temperature
        if 0 < p.top_k < vocab:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            probs = torch.softmax(sorted_scores, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs
            drop = before >= p.top_p
            drop[0] = False
            scores = scores.index_put((order[drop],), torch.tensor(float("-inf"), device=scores.device))
        if p.min_p > 0.0:
            probs = torch.softmax(scores, dim=-1)
            scores = scores.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
        return scores

    def sample(
        self,
        logits: torch.Tensor,
        history: Sequence[int] | torch.Tensor = (),
        num_prompt: int = 0,
        raw_logits: torch.Tensor | None = None,
    ) -> SampledToken:
        """Choose the next token from ``logits`` [vocab]; ``history`` is the prompt (its first ``num_prompt``
        ids) plus the generated ids so far. ``raw_logits``: the row before any mask, for the logprobs
        (default ``logits``)."""
        if logits.dim() != 1:
            raise ValueError(f"Sampler.sample expects logits of shape [vocab], got {tuple(logits.shape)}")
        scores = self.process(logits, history, num_prompt)
        if self.params.greedy:
            token = int(torch.argmax(scores))
        else:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self._generator_for(probs.device)))
        if self.params.logprobs <= 0:
            return SampledToken(token)
        raw = torch.log_softmax((logits if raw_logits is None else raw_logits).to(torch.float32), dim=-1)
        top = torch.topk(raw, min(self.params.logprobs, raw.numel()))
        pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        return SampledToken(token, float(raw[token]), pairs)
