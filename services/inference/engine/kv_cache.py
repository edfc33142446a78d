"""The KV cache, allocated once as fixed rows (slots), and the bookkeeping of which sequence owns which row.

Every admitted sequence owns one row of ``context_length`` positions. Sequences that are decoding are
kept in the first rows, ``0 .. decode_rows - 1``, so that a decode step reads one contiguous block of
the cache (a view, no gather). Rows past that block are free or hold sequences still prefilling. When a
decoding sequence ends, the last decoding row moves into its place; when a prefill completes, its row
swaps into the first row after the block. Moves copy one row, and happen only when sequences start or end.
"""

from __future__ import annotations

from typing import Protocol

import torch

from services.inference.models.llama import KVCache, LlamaForCausalLM


class RowOwner(Protocol):
    """What the cache needs to know of a sequence."""

    row: int

    @property
    def cached_tokens(self) -> int: ...


class SlotKVCache:
    """Rows of keys and values for up to ``rows`` sequences, and who owns each."""

    def __init__(self, model: LlamaForCausalLM, rows: int, row_length: int) -> None:
        if rows <= 0:
            raise ValueError(f"the KV cache needs at least one row, got {rows}")
        self.cache: KVCache = model.new_cache(batch=rows, max_len=row_length)
        self.rows = rows
        self.row_length = row_length
        self.decode_rows = 0
        self._owners: list[RowOwner | None] = [None] * rows

    @property
    def capacity_tokens(self) -> int:
        """Positions the cache holds in all."""
        return self.rows * self.row_length

    def used_tokens(self) -> int:
        """Positions filled by the sequences that own rows."""
        return sum(owner.cached_tokens for owner in self._owners if owner is not None)

    def decoding(self) -> list[RowOwner]:
        """The owners of the decode block, in row order."""
        return [owner for owner in self._owners[: self.decode_rows] if owner is not None]

    def can_allocate(self) -> bool:
        """Whether a row is free."""
        return any(owner is None for owner in self._owners)

    def allocate(self, owner: RowOwner) -> None:
        """Give ``owner`` a free row (past the decode block, where all free rows are)."""
        for row in range(self.decode_rows, self.rows):
            if self._owners[row] is None:
                self._owners[row] = owner
                owner.row = row
                return
        raise RuntimeError("no free KV cache row; check can_allocate() first")

    def promote(self, owner: RowOwner) -> None:
        """Move a sequence whose prompt is cached into the decode block."""
        target = self.decode_rows
        if owner.row != target:
            other = self._owners[target]
            if other is None:
                self._move(owner, target)
            else:
                self._swap(owner, other)
        self.decode_rows += 1

    def release(self, owner: RowOwner) -> None:
        """Free the row of a finished sequence, keeping the decode block contiguous."""
        row = owner.row
        if row < 0 or self._owners[row] is not owner:
            return
        self._owners[row] = None
        owner.row = -1
        if row < self.decode_rows:
            last = self.decode_rows - 1
            tail = self._owners[last]
            if last != row and tail is not None:
                self._owners[last] = None
                self._move(tail, row)
            self.decode_rows -= 1

    def _move(self, owner: RowOwner, target: int) -> None:
        length = owner.cached_tokens
        for layer in (*self.cache.keys, *self.cache.values):
            layer[target, :, :length] = layer[owner.row, :, :length]
        if self._owners[owner.row] is owner:
            self._owners[owner.row] = None
        self._owners[target] = owner
        owner.row = target

    def _swap(self, a: RowOwner, b: RowOwner) -> None:
        length = max(a.cached_tokens, b.cached_tokens)
        for layer in (*self.cache.keys, *self.cache.values):
            rows = torch.tensor([a.row, b.row], device=layer.device)
            layer[rows.flip(0), :, :length] = layer[rows, :, :length].clone()
        self._owners[a.row], self._owners[b.row] = b, a
        a.row, b.row = b.row, a.row
