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
    tables (``index_select`` of [B * max_blocks] blocks), never the whole pool, straight into the layout
    attention multiplies in, [kv_heads, B, blocks * block_size, head_dim] (one copy, then views only). The
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


@dataclass(slots=True)
class CacheStep:
    """Where one forward pass reads and writes the cache, computed once and shared by every layer.

    Batch row b's token at position p is written to slot ``tables[b, p // block_size] * block_size +
    p % block_size`` and attends to every position up to its own among its row's blocks.
    """

    cache: KVCache
    tables: torch.Tensor
    """[B, blocks] block ids per row, covering every position the row reads (padding: any valid block)."""
    slots: torch.Tensor
    """[B * T] flat slot per token, in (row, token) order."""
    mask: torch.Tensor
    """[B, 1, T, blocks * block_size]: True where a token may attend."""

    @classmethod
    def build(cls, cache: KVCache, positions: torch.Tensor, tables: torch.Tensor) -> CacheStep:
        """The addressing of ``positions`` [B, T] through block ``tables`` [B, blocks]."""
        size = cache.block_size
        slots = torch.gather(tables, 1, positions // size) * size + positions % size
        span = torch.arange(tables.shape[1] * size, device=positions.device)
        mask = (span.view(1, 1, -1) <= positions.unsqueeze(-1)).unsqueeze(1)
        return cls(cache, tables, slots.reshape(-1), mask)

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``keys``/``values`` [B, kv_heads, T, head_dim] of ``layer``; return each row's blocks, heads
        first: [kv_heads, B, blocks * block_size, head_dim] (one gather of the batch's blocks into the cache's
        reused buffers: valid until the next ``store``)."""
        pool_keys, pool_values = self.cache.keys[layer], self.cache.values[layer]
        b, heads, _, dim = keys.shape
        flat = (heads, -1, dim)
        pool_keys.view(flat).index_copy_(1, self.slots, keys.transpose(0, 1).reshape(flat).to(pool_keys.dtype))
        pool_values.view(flat).index_copy_(1, self.slots, values.transpose(0, 1).reshape(flat).to(pool_values.dtype))
        index = self.tables.reshape(-1)
        span = (heads, b, self.tables.shape[1] * self.cache.block_size, dim)
        if torch.is_grad_enabled():  # autograd cannot record a gather into a reused buffer (out=)
            return pool_keys.index_select(1, index).view(span), pool_values.index_select(1, index).view(span)
        gathered_keys, gathered_values = self.cache.gather_buffers(index.numel())
        torch.index_select(pool_keys, 1, index, out=gathered_keys)
        torch.index_select(pool_values, 1, index, out=gathered_values)
        return gathered_keys.view(span), gathered_values.view(span)
