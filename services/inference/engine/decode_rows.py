"""Who sits in which of the model's decode rows (``models.kv_cache.DecodeRows``), and what each row holds.

A decode pass reads batch row b from row b, so the batch must sit in rows 0..B-1. Sequences keep their row
from step to step; a sequence that leaves the batch (finished, preempted, aborted) frees its row, and the one
in the last row moves into the hole. A row is (re)loaded from the sequence's blocks in the pool whenever it
does not hold exactly the positions before the one the sequence decodes next (it just joined, it moved, or
it was recomputed, or a batch too large for the rows decoded without them): each decode step then adds its
own token to the row, so a sequence decoding on is never copied again. Engine thread only.
"""

from __future__ import annotations

from services.inference.engine.sequence import Sequence
from services.inference.models.kv_cache import DecodeRows


class DecodeBatchRows:
    """The decode batch's placement in ``rows``: sequence per row and positions each row holds."""

    def __init__(self, rows: DecodeRows) -> None:
        self.rows = rows
        self._seated: list[Sequence] = []
        self._held: list[int] = []
        """Row i holds positions 0..n-1 of ``_seated[i]`` for n = ``_held[i]`` (-1: to be loaded)."""
        self.loads = 0
        """Rows loaded from the pool so far, for tests and profiles."""

    @property
    def capacity(self) -> int:
        """Sequences the rows seat."""
        return len(self.rows.keys[0])

    def arrange(self, seqs: list[Sequence]) -> list[Sequence]:
        """Seat ``seqs`` (the decode batch) in rows 0..len(seqs)-1 and load the rows that need it; the
        sequences in row order. Afterwards every row holds the positions before its sequence's next one."""
        batch = set(seqs)
        row = 0
        while row < len(self._seated):  # free the rows of sequences that left: the last row fills each hole
            if self._seated[row] in batch:
                row += 1
                continue
            last = self._seated.pop()
            self._held.pop()
            if row < len(self._seated):
                self._seated[row], self._held[row] = last, -1  # moved: loaded again below
        seated = set(self._seated)
        for seq in seqs:
            if seq not in seated:
                self._seated.append(seq)
                self._held.append(-1)
        for row, seq in enumerate(self._seated):
            position = seq.next_position
            if self._held[row] != position:
                self.rows.load(row, seq.block_table[: -(-position // self.rows.cache.block_size)])
                self.loads += 1
            self._held[row] = position + 1  # the pass writes this step's token
        return list(self._seated)
