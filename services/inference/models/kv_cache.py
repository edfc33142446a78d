"""The model's paged key/value cache: per-layer block pools, and how one forward pass addresses them.

Which sequence owns which block is not decided here: the engine's ``BlockAllocator`` hands blocks out and
each sequence's block table lists its own. A forward pass is given one table per batch row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.inference.models.config import LlamaConfig


class KVCache:
    """Keys and values of every layer in ``num_blocks`` blocks of ``block_size`` token slots.

    Layout per layer: [kv_heads, num_blocks, block_size, head_dim], heads outermost. Token slot
    ``block * block_size + offset`` is one row of each head's flat view [kv_heads, slots, head_dim], so a pass
    writes all its tokens with one ``index_copy_`` of a slot mapping; reads gather whole blocks of the batch's
    tables (``index_select`` of [B * max_blocks] blocks), never the whole pool, into
    [kv_heads, B, blocks * block_size, head_dim] (one copy, then views only; attention batches over heads
    first to read it without another). The
    gathers land in two buffers kept here and reused by every layer and pass (``gather_buffers``): a fresh
    tensor of megabytes per layer would be new pages for the allocator to map and fault in each time.

    ``default_tables`` [rows, max_len / block_size] give row i the blocks ``i * n .. (i + 1) * n - 1``: the
    contiguous addressing used when a caller passes no tables (tests, scripts: ``new_cache(batch, max_len)``).
    """

    def __init__(
        self,
        config: LlamaConfig,
        num_blocks: int,
        block_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
        rows: int = 1,
        max_len: int | None = None,
    ) -> None:
        if num_blocks <= 0 or block_size <= 0 or rows <= 0:
            raise ValueError(
                f"KVCache needs positive num_blocks, block_size and rows, got {num_blocks}, {block_size}, {rows}"
            )
        shape = (config.kv_heads, num_blocks, block_size, config.dim_per_head)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_heads = config.kv_heads
        per_row = num_blocks // rows
        self.max_len = min(max_len or per_row * block_size, per_row * block_size, config.max_position_embeddings)
        """Positions a row of the default tables holds."""
        self.default_tables = torch.arange(rows * per_row, device=device).view(rows, per_row)
        self._gathered = (torch.empty(0, device=device, dtype=dtype), torch.empty(0, device=device, dtype=dtype))

    def gather_buffers(self, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value buffers [kv_heads, blocks, block_size, head_dim] for one layer's gather, grown (doubled)
        when too small. Every call returns the same memory: the caller's use ends before the next layer's."""
        keys = self.keys[0]
        shape = (keys.shape[0], blocks, *keys.shape[2:])
        need = shape[0] * blocks * shape[2] * shape[3]
        if self._gathered[0].numel() < need:
            size = max(need, 2 * self._gathered[0].numel())
            with torch.inference_mode(False):  # normal tensors: writable by a later pass outside inference mode
                self._gathered = (keys.new_empty(size), keys.new_empty(size))
        return self._gathered[0][:need].view(shape), self._gathered[1][:need].view(shape)

    @property
    def capacity_tokens(self) -> int:
        """Token slots in all."""
        return self.num_blocks * self.block_size

    @property
    def nbytes(self) -> int:
        """Memory held by the cache in bytes."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def _mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """[B, 1, T, length]: True where the token at ``positions`` [B, T] may attend (positions up to its own)."""
    span = torch.arange(length, device=positions.device)
    mask = (span.view(1, 1, -1) <= positions.unsqueeze(-1)).unsqueeze(1)
    return mask


@dataclass(slots=True)
class CacheStep:
    """Where one forward pass reads and writes the cache, computed once and shared by every layer.

    Batch row b's token at position p is written to slot ``tables[b, p // block_size] * block_size +
    p % block_size`` and attends to every position up to its own among its row's blocks.
    """

    cache: KVCache
    tables: torch.Tensor
    """[B, blocks] block ids per row, covering every position the row reads (padding: any valid block; none
    with ``rows``)."""
    slots: torch.Tensor
    """[B * T] flat slot per token, in (row, token) order."""
    mask: torch.Tensor
    """[B, 1, T, L]: True where a token may attend (L: blocks * block_size, or the rows' read length)."""
    rows: DecodeRows | None = None
    """Decode rows holding every earlier position of each batch row b in its row b: read as views, no gather."""
    row_index: torch.Tensor | None = None
    """[B * kv_heads] where each batch row's token goes in ``rows`` (``DecodeRows.flat_index``)."""

    @classmethod
    def build(cls, cache: KVCache, positions: torch.Tensor, tables: torch.Tensor) -> CacheStep:
        """The addressing of ``positions`` [B, T] through block ``tables`` [B, blocks]."""
        size = cache.block_size
        slots = torch.gather(tables, 1, positions // size) * size + positions % size
        return cls(cache, tables, slots.reshape(-1), _mask(positions, tables.shape[1] * size))

    @classmethod
    def decode(
        cls, cache: KVCache, positions: torch.Tensor, slots: torch.Tensor, rows: DecodeRows, end: int
    ) -> CacheStep:
        """One token per batch row at ``positions`` [B, 1], written at pool ``slots`` [B] and in ``rows`` (rows
        0..B-1, which must hold each row's earlier positions), attending to the rows' first ``end`` positions
        (``end``: one past the largest position, known to the caller: no device sync here)."""
        index = rows.flat_index(positions.view(-1))
        return cls(cache, cache.default_tables[:0], slots, _mask(positions, end), rows, index)

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``keys``/``values`` [B, kv_heads, T, head_dim] of ``layer``; return what each row attends to,
        [B, kv_heads, L, head_dim] with L = ``mask.shape[-1]``: views of ``rows`` when the step has them, else one
        gather of the batch's blocks into the cache's reused buffers, heads outermost in memory (valid until the
        next ``store``)."""
        pool_keys, pool_values = self.cache.keys[layer], self.cache.values[layer]
        b, heads, _, dim = keys.shape
        flat = (heads, -1, dim)
        pool_keys.view(flat).index_copy_(1, self.slots, keys.transpose(0, 1).reshape(flat).to(pool_keys.dtype))
        pool_values.view(flat).index_copy_(1, self.slots, values.transpose(0, 1).reshape(flat).to(pool_values.dtype))
        if self.rows is not None and self.row_index is not None:
            return self.rows.store(layer, self.row_index, keys, values, self.mask.shape[-1])
        index = self.tables.reshape(-1)
        span = (heads, b, self.tables.shape[1] * self.cache.block_size, dim)
        if torch.is_grad_enabled():  # autograd cannot record a gather into a reused buffer (out=)
            gathered_keys, gathered_values = pool_keys.index_select(1, index), pool_values.index_select(1, index)
        else:
            gathered_keys, gathered_values = self.cache.gather_buffers(index.numel())
            torch.index_select(pool_keys, 1, index, out=gathered_keys)
            torch.index_select(pool_values, 1, index, out=gathered_values)
        return gathered_keys.view(span).transpose(0, 1), gathered_values.view(span).transpose(0, 1)


class DecodeRows:
    """Keys and values of a decode batch kept in rows of their own across steps, [rows, kv_heads, length, head_dim]
    per layer (batch row b in row b, position p at index p), so a decode step attends to views of rows
    0..B-1 (rows outermost, the layout decode attention multiplies in without a copy) instead of gathering the
    batch's blocks in every layer.

    A second copy of what the batch's blocks hold: the engine's ``DecodeBatchRows`` decides who sits where and
    fills a row from the pool (``load``) when a sequence takes it; each decode step writes its new token to
    both. Costs ``rows * length`` positions of memory next to the pool.
    """

    def __init__(self, cache: KVCache, rows: int, length: int) -> None:
        pool = cache.keys[0]
        shape = (rows, cache.kv_heads, length, pool.shape[-1])
        layers = len(cache.keys)
        self.keys = [pool.new_zeros(shape) for _ in range(layers)]
        self.values = [pool.new_zeros(shape) for _ in range(layers)]
        self.index = torch.arange(max(rows, cache.kv_heads), device=pool.device)
        self.cache = cache
        self.length = length

    def load(self, row: int, blocks: list[int]) -> None:
        """Copy the pool's ``blocks`` (in position order) into the start of ``row``, every layer."""
        size = self.cache.block_size
        index = torch.tensor(blocks, device=self.keys[0].device)
        for pool, mirror in ((self.cache.keys, self.keys), (self.cache.values, self.values)):
            for layer, target in enumerate(mirror):
                heads, _, _, dim = pool[layer].shape
                target[row, :, : len(blocks) * size].copy_(pool[layer].index_select(1, index).view(heads, -1, dim))

    def flat_index(self, positions: torch.Tensor) -> torch.Tensor:
        """[B * kv_heads] indexes, in a layer viewed as [rows * kv_heads * length, head_dim], of batch row b's
        token at ``positions[b]`` in row b, one per head."""
        b, heads = positions.shape[0], self.keys[0].shape[1]
        base = self.index[:b].view(-1, 1) * heads + self.index[:heads].view(1, -1)
        return (base * self.length + positions.view(-1, 1)).view(-1)

    def store(
        self, layer: int, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``keys``/``values`` [B, kv_heads, 1, head_dim] of ``layer`` at ``index`` (``flat_index``); return
        the views [B, kv_heads, end, head_dim] of rows 0..B-1."""
        b, _, _, dim = keys.shape
        mirror_keys, mirror_values = self.keys[layer], self.values[layer]
        mirror_keys.view(-1, dim).index_copy_(0, index, keys.reshape(-1, dim).to(mirror_keys.dtype))
        mirror_values.view(-1, dim).index_copy_(0, index, values.reshape(-1, dim).to(mirror_values.dtype))
        return mirror_keys[:b, :, :end], mirror_values[:b, :, :end]
