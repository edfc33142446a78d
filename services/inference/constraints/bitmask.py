"""Token bitmasks for a batch of constrained sequences: filled in parallel (GIL released), applied to logits.

A mask row has one bit per token id of the tokenizer (``(vocab + 31) // 32`` int32 words, bit ``i % 32`` of word
``i // 32``). Ids the mask does not cover (a model's lm_head larger than its tokenizer) are never allowed.
``MaskPrefetcher`` fills the next decode batch's masks on a worker thread while the forward pass runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import llguidance
import torch

from services.inference.constraints.compiler import TokenConstraint

_executor: llguidance.LLExecutor | None = None


def _llexecutor() -> llguidance.LLExecutor:
    global _executor
    if _executor is None:
        _executor = llguidance.LLExecutor()
    return _executor


def mask_words(vocab_size: int) -> int:
    """int32 words in one mask row of ``vocab_size`` token ids."""
    return (vocab_size + 31) // 32


def fill_bitmask(constraints: Sequence[TokenConstraint], vocab_size: int) -> torch.Tensor:
    """The next-token masks of ``constraints``, one row each (int32 [len, words], on the CPU)."""
    words = mask_words(vocab_size)
    mask = torch.zeros((len(constraints), words), dtype=torch.int32)
    if constraints:
        pairs = [(c.matcher, i) for i, c in enumerate(constraints)]
        _llexecutor().unsafe_compute_mask_ptr(pairs, mask.data_ptr(), words * 4, len(constraints))
    return mask


def unpack(mask: torch.Tensor, width: int, device: torch.device) -> torch.Tensor:
    """Bool [rows, width]: token allowed; ids past the mask's bits are False."""
    bits = mask.to(device)
    shifts = torch.arange(32, dtype=torch.int32, device=device)
    allowed = ((bits.unsqueeze(-1) >> shifts) & 1).bool().reshape(bits.shape[0], -1)
    if allowed.shape[1] >= width:
        return allowed[:, :width]
    pad = torch.zeros((bits.shape[0], width - allowed.shape[1]), dtype=torch.bool, device=device)
    return torch.cat([allowed, pad], dim=1)


def apply_bitmask(logits: torch.Tensor, rows: Sequence[int], mask: torch.Tensor) -> None:
    """Set the disallowed tokens of ``logits`` [batch, vocab] rows ``rows`` to -inf, in place (mask row i → rows[i])."""
    if not rows:
        return
    allowed = unpack(mask, logits.shape[-1], logits.device)
    index = torch.tensor(list(rows), dtype=torch.long, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


class MaskPrefetcher:
    """Fills one batch's masks ahead on a worker thread; ``take`` joins it when it is the same batch."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genmesh-masks")
        self._pending: tuple[tuple[int, ...], Future[torch.Tensor]] | None = None

    def start(self, key: tuple[int, ...], constraints: Sequence[TokenConstraint], vocab_size: int) -> None:
        """Begin filling the masks of ``constraints`` for the batch ``key`` (its sequence ids, in order)."""
        self.discard()
        self._pending = (key, self._pool.submit(fill_bitmask, list(constraints), vocab_size))

    def take(self, key: tuple[int, ...]) -> torch.Tensor | None:
        """The masks started for ``key`` (waiting for them), or None when none were started for it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        started, future = pending
        result = future.result()
        return result if started == key else None

    def discard(self) -> None:
        """Drop a fill no batch will take (waiting for it: the matchers must be idle before they advance)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].result()
