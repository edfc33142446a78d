"""The model runner: turns a step's prefill chunks and decode batch into forward passes and sampled tokens."""

from __future__ import annotations

import torch

from services.inference.engine.kv_cache import SlotKVCache
from services.inference.engine.sequence import Sequence
from services.inference.models.llama import LlamaForCausalLM
from services.inference.sampler import SampledToken


class ModelRunner:
    """Runs forward passes against the slot cache. Engine thread only; call inside ``torch.inference_mode()``."""

    def __init__(self, model: LlamaForCausalLM, cache: SlotKVCache, device: torch.device) -> None:
        self._model = model
        self._cache = cache
        self._device = device

    def prefill(self, seq: Sequence, count: int) -> torch.Tensor | None:
        """Feed the next ``count`` prompt tokens of ``seq``; once the whole prompt is in, its last logits [vocab]."""
        start = seq.prefilled
        ids = torch.tensor([seq.prompt_ids[start : start + count]], device=self._device)
        positions = torch.arange(start, start + count, device=self._device).unsqueeze(0)
        logits = self._model(ids, positions, self._cache.cache, last_only=True, first_row=seq.row)
        seq.prefilled += count
        return logits[0, -1] if seq.prompt_done else None

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed every decoding sequence its last token in one pass; logits [len(seqs), vocab].

        ``seqs`` must be the decode block in row order (rows 0..n-1).
        """
        ids = torch.tensor([[s.next_token] for s in seqs], device=self._device)
        positions = torch.tensor([[s.next_position] for s in seqs], device=self._device)
        logits: torch.Tensor = self._model(ids, positions, self._cache.cache, last_only=True, first_row=0)
        return logits[:, -1]


def sample_batch(seqs: list[Sequence], logits: torch.Tensor) -> list[SampledToken]:
    """One token per sequence from ``logits`` [len(seqs), vocab]: one argmax for the plain greedy ones."""
    chosen: list[SampledToken | None] = [None] * len(seqs)
    plain = [i for i, s in enumerate(seqs) if s.plain_greedy]
    if plain:
        best = logits[plain].argmax(dim=-1).tolist()
        for i, token in zip(plain, best, strict=True):
            chosen[i] = SampledToken(int(token))
    for i, seq in enumerate(seqs):
        if chosen[i] is None:
            chosen[i] = seq.sampler.sample(logits[i], seq.history)
    return [token for token in chosen if token is not None]
