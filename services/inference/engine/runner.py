"""The model runner: turns a step's prefill chunks and decode batch into forward passes and logits."""

from __future__ import annotations

import torch

from services.inference.engine.kv_cache import PagedKVCache
from services.inference.engine.scheduler import PrefillChunk
from services.inference.engine.sequence import Sequence
from services.inference.models.llama import LlamaForCausalLM


class ModelRunner:
    """Runs forward passes against the paged cache; changes no sequence. Engine thread only, in inference mode.

    Each pass gets, per batch row, the block table covering the positions it reads (rows padded with
    block 0, which the attention mask hides), sized here on the host so the pass needs no device sync.
    """

    def __init__(self, model: LlamaForCausalLM, cache: PagedKVCache, device: torch.device) -> None:
        self._model = model
        self._cache = cache
        self._device = device

    def _tables(self, seqs: list[Sequence], ends: list[int]) -> torch.Tensor:
        """[len(seqs), blocks] block ids covering positions ``< ends[i]`` of each sequence, zero-padded."""
        width = self._cache.blocks_for(max(ends))
        rows = [seq.block_table[:width] + [0] * (width - len(seq.block_table[:width])) for seq in seqs]
        return torch.tensor(rows, device=self._device)

    def prefill(self, chunks: list[PrefillChunk]) -> torch.Tensor | None:
        """Feed each chunk into its sequence's blocks; the last logits [k, vocab] of the k chunks that give a
        first token (``PrefillChunk.samples``), in chunk order (None when none does)."""
        last: list[torch.Tensor] = []
        for chunk in chunks:
            seq, start, count = chunk.seq, chunk.start, chunk.count
            ids = torch.tensor([seq.token_ids[start : start + count]], device=self._device)
            positions = torch.arange(start, start + count, device=self._device).unsqueeze(0)
            tables = self._tables([seq], [start + count])
            logits = self._model(ids, positions, self._cache.storage, last_only=True, tables=tables)
            if chunk.samples:
                last.append(logits[0, -1])
        return torch.stack(last) if last else None

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed every decoding sequence its last token in one pass; logits [len(seqs), vocab]."""
        ids = torch.tensor([[s.next_token] for s in seqs], device=self._device)
        ends = [s.next_position + 1 for s in seqs]
        positions = torch.tensor([[end - 1] for end in ends], device=self._device)
        tables = self._tables(seqs, ends)
        logits: torch.Tensor = self._model(ids, positions, self._cache.storage, last_only=True, tables=tables)
        return logits[:, -1]
