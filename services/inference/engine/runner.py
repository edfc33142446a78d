"""The model runner: turns a step's prefill chunks and decode batch into forward passes and logits."""

from __future__ import annotations

import torch

from services.inference.engine.decode_rows import DecodeBatchRows
from services.inference.engine.kv_cache import PagedKVCache
from services.inference.engine.scheduler import PrefillChunk
from services.inference.engine.sequence import Sequence
from services.inference.models.llama import CacheStep, DecodeRows, LlamaForCausalLM


class ModelRunner:
    """Runs forward passes against the paged cache; changes no sequence. Engine thread only, in inference mode.

    Each prefill pass gets the block table covering the positions it reads, sized here on the host so the pass
    needs no device sync. Decode passes read the batch's decode rows (``engine.decode_rows``: up to
    ``decode_rows`` rows of the context beside the pool, never more positions than the pool holds) as views;
    a batch they cannot seat gets, per batch row, the blocks it reads (rows padded with block 0, which the
    attention mask hides), gathered every layer.
    """

    def __init__(
        self, model: LlamaForCausalLM, cache: PagedKVCache, device: torch.device, decode_rows: int = 0
    ) -> None:
        self._model = model
        self._cache = cache
        self._device = device
        length = min(model.config.max_position_embeddings, cache.capacity_tokens)  # no sequence outgrows the pool
        decode_rows = min(decode_rows, cache.capacity_tokens // length)  # never more memory than the pool
        self.rows = DecodeBatchRows(DecodeRows(cache.storage, decode_rows, length)) if decode_rows else None

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
        if self.rows is not None and len(seqs) <= self.rows.capacity:
            return self._decode_rows(self.rows, seqs)
        ids = torch.tensor([[s.next_token] for s in seqs], device=self._device)
        ends = [s.next_position + 1 for s in seqs]
        positions = torch.tensor([[end - 1] for end in ends], device=self._device)
        tables = self._tables(seqs, ends)
        logits: torch.Tensor = self._model(ids, positions, self._cache.storage, last_only=True, tables=tables)
        return logits[:, -1]

    def _decode_rows(self, rows: DecodeBatchRows, seqs: list[Sequence]) -> torch.Tensor:
        """``decode`` through the decode rows: the pass runs in row order, the logits come back in ``seqs``'."""
        seated = rows.arrange(seqs)
        size = self._cache.block_size
        at = [s.next_position for s in seated]
        slots = [s.block_table[p // size] * size + p % size for s, p in zip(seated, at, strict=True)]
        ids = torch.tensor([[s.next_token] for s in seated], device=self._device)
        positions = torch.tensor([[p] for p in at], device=self._device)
        slot_ids = torch.tensor(slots, device=self._device)
        step = CacheStep.decode(self._cache.storage, positions, slot_ids, rows.rows, max(at) + 1)
        logits: torch.Tensor = self._model(ids, positions, last_only=True, step=step)[:, -1]
        if seated == seqs:  # sequences compare by identity
            return logits
        row = {seq: index for index, seq in enumerate(seated)}
        return logits[torch.tensor([row[seq] for seq in seqs], device=self._device)]
