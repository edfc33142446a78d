"""The engine's KV cache: the model's cache tensors, allocated once as fixed rows, and who holds which row.

Every admitted sequence holds one row of ``row_length`` positions. The cache hands rows out and takes
them back (``can_allocate`` / ``allocate`` / ``deallocate``) and moves a sequence's cached tokens to
another row (``relocate``). Where sequences sit is the scheduler's decision: it keeps its decode batch in
the first rows, in order, so that a decode pass reads one contiguous block (a view, no gather). Only the
engine thread calls in, except for the counts read by ``Engine.load``.
"""

from __future__ import annotations

import torch

from services.inference.engine.sequence import Sequence
from services.inference.models.kv_cache import KVCache


class SlotKVCache:
    """Rows of keys and values for up to ``rows`` sequences, and which sequence holds each."""

    def __init__(self, storage: KVCache) -> None:
        self.storage = storage
        self.rows = storage.batch
        self.row_length = storage.max_len
        self._holders: list[Sequence | None] = [None] * self.rows
        self._free = self.rows

    @property
    def capacity_tokens(self) -> int:
        """Positions the cache holds in all."""
        return self.rows * self.row_length

    @property
    def free_rows(self) -> int:
        """Rows nobody holds."""
        return self._free

    def used_tokens(self) -> int:
        """Positions filled by the sequences that hold rows."""
        return sum(seq.cached_tokens for seq in self._holders if seq is not None)

    def holder(self, row: int) -> Sequence | None:
        """The sequence holding ``row``, if any."""
        return self._holders[row]

    def can_allocate(self) -> bool:
        """Whether a row is free."""
        return self._free > 0

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` the lowest free row; ValueError if it holds one, RuntimeError if none is free."""
        if seq.row >= 0:
            raise ValueError(f"sequence {seq.request_id} already holds cache row {seq.row}")
        for row, holder in enumerate(self._holders):
            if holder is None:
                self._holders[row] = seq
                seq.row = row
                self._free -= 1
                return
        raise RuntimeError("no free KV cache row; check can_allocate() first")

    def deallocate(self, seq: Sequence) -> None:
        """Take ``seq``'s row back (its contents are left as they are); nothing if it holds none."""
        if seq.row < 0 or self._holders[seq.row] is not seq:
            return
        self._holders[seq.row] = None
        seq.row = -1
        self._free += 1

    def relocate(self, seq: Sequence, row: int) -> None:
        """Move ``seq``'s cached tokens to ``row``; a sequence holding ``row`` swaps into ``seq``'s old row."""
        if seq.row < 0 or self._holders[seq.row] is not seq:
            raise ValueError(f"sequence {seq.request_id} holds no cache row")
        if not 0 <= row < self.rows:
            raise ValueError(f"row {row} is outside the cache (0..{self.rows - 1})")
        if row == seq.row:
            return
        other = self._holders[row]
        if other is None:
            self._move(seq, row)
        else:
            self._swap(seq, other)

    def _move(self, seq: Sequence, target: int) -> None:
        length = seq.cached_tokens
        for layer in (*self.storage.keys, *self.storage.values):
            layer[target, :, :length] = layer[seq.row, :, :length]
        self._holders[seq.row] = None
        self._holders[target] = seq
        seq.row = target

    def _swap(self, a: Sequence, b: Sequence) -> None:
        length = max(a.cached_tokens, b.cached_tokens)
        for layer in (*self.storage.keys, *self.storage.values):
            rows = torch.tensor([a.row, b.row], device=layer.device)
            layer[rows.flip(0), :, :length] = layer[rows, :, :length].clone()
        self._holders[a.row], self._holders[b.row] = b, a
        a.row, b.row = b.row, a.row
