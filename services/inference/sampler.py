"""Turn a sequence's last-position logits into its next token under SamplingParams."""

from __future__ import annotations

from collections.abc import Sequence
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
    """Per-request sampler: processors in Hugging Face order, then argmax or a seeded draw.

    Order: repetition penalty (over prompt and generated ids; positive logits divided, negative
    multiplied), temperature, top-k, top-p. Temperature 0 takes the argmax of the penalised logits.
    Each sampler owns a ``torch.Generator`` seeded from ``params.seed`` (randomly when unset), so the
    same seed and prompt reproduce the same tokens.

    Reported logprobs are *raw*: ``log_softmax`` of the model's unprocessed logits, so they stay
    meaningful under greedy decoding and truncation (a processed distribution would give the chosen
    greedy token probability 1).
    """

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
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

    def process(self, logits: torch.Tensor, history: Sequence[int] | torch.Tensor = ()) -> torch.Tensor:
        """The processed float32 logits [vocab] that the draw uses (filtered tokens are -inf)."""
        p = self.params
        scores = logits.to(torch.float32).clone()
        if p.repetition_penalty != 1.0 and len(history) > 0:
            ids = torch.as_tensor(history, dtype=torch.long, device=scores.device)
            ids = torch.unique(ids[(ids >= 0) & (ids < scores.numel())])
            picked = scores[ids]
            scores[ids] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
        if p.greedy:
            return scores
        if p.temperature != 1.0:
            scores = scores / p.temperature
        if 0 < p.top_k < scores.numel():
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            probs = torch.softmax(sorted_scores, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs
            drop = before >= p.top_p
            drop[0] = False
            scores = scores.index_put((order[drop],), torch.tensor(float("-inf"), device=scores.device))
        return scores

    def sample(self, logits: torch.Tensor, history: Sequence[int] | torch.Tensor = ()) -> SampledToken:
        """Choose the next token from ``logits`` [vocab]; ``history`` is the prompt plus generated ids so far."""
        if logits.dim() != 1:
            raise ValueError(f"Sampler.sample expects logits of shape [vocab], got {tuple(logits.shape)}")
        scores = self.process(logits, history)
        if self.params.greedy:
            token = int(torch.argmax(scores))
        else:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self._generator_for(probs.device)))
        if self.params.logprobs <= 0:
            return SampledToken(token)
        raw = torch.log_softmax(logits.to(torch.float32), dim=-1)
        top = torch.topk(raw, min(self.params.logprobs, raw.numel()))
        pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        return SampledToken(token, float(raw[token]), pairs)
