"""The model runner: turns a step's prefill chunks and decode batch into forward passes and logits."""

from __future__ import annotations

import torch

from services.inference.engine.kv_cache import SlotKVCache
from services.inference.engine.scheduler import PrefillChunk
from services.inference.engine.sequence import Sequence
from services.inference.models.llama import LlamaForCausalLM


class ModelRunner:
    """Runs forward passes against the slot cache; changes no sequence. Engine thread only, in inference mode."""

    def __init__(self, model: LlamaForCausalLM, cache: SlotKVCache, device: torch.device) -> None:
        self._model = model
        self._cache = cache
        self._device = device

    def prefill(self, chunks: list[PrefillChunk]) -> torch.Tensor | None:
        """Feed each chunk into its sequence's row; the last logits [k, vocab] of the k chunks that complete
        their prompt, in chunk order (None when none does)."""
        last: list[torch.Tensor] = []
        for chunk in chunks:
            seq, start, count = chunk.seq, chunk.start, chunk.count
            ids = torch.tensor([seq.prompt_ids[start : start + count]], device=self._device)
            positions = torch.arange(start, start + count, device=self._device).unsqueeze(0)
            logits = self._model(ids, positions, self._cache.storage, last_only=True, first_row=seq.row)
            if chunk.completes:
                last.append(logits[0, -1])
        return torch.stack(last) if last else None

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed every decoding sequence its last token in one pass; logits [len(seqs), vocab].

        ``seqs`` must be the decode batch, which holds rows 0..n-1 in order.
        """
        ids = torch.tensor([[s.next_token] for s in seqs], device=self._device)
        positions = torch.tensor([[s.next_position] for s in seqs], device=self._device)
        logits: torch.Tensor = self._model(ids, positions, self._cache.storage, last_only=True, first_row=0)
        return logits[:, -1]
