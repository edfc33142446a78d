"""The model's key/value cache: preallocated per-layer tensors, and how one forward pass addresses them.

Which sequence owns which row is not decided here: the engine's ``SlotKVCache`` owns a ``KVCache`` and
hands its rows out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.inference.models.config import LlamaConfig


class KVCache:
    """Preallocated keys and values of every layer for ``batch`` sequences of up to ``max_len`` tokens.

    Layout per layer: [batch, kv_heads, max_len, head_dim]; a token at position p of row b lives at [b, :, p].
    Attention reads a row block's first positions as a view in the layout it multiplies in, with no copy.
    """

    def __init__(
        self, config: LlamaConfig, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"KVCache needs a positive batch and max_len, got {batch} and {max_len}")
        if max_len > config.max_position_embeddings:
            raise ValueError(f"KVCache max_len {max_len} exceeds the context length {config.max_position_embeddings}")
        shape = (batch, config.kv_heads, max_len, config.dim_per_head)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.batch = batch
        self.max_len = max_len
        self.kv_heads = config.kv_heads

    @property
    def nbytes(self) -> int:
        """Memory held by the cache in bytes."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


@dataclass(slots=True)
class CacheStep:
    """Where one forward pass reads and writes the cache, computed once and shared by every layer.

    Batch row i uses cache row ``first_row + i``; its tokens are written at their positions and attend
    to every cached position up to their own.
    """

    cache: KVCache
    write_index: torch.Tensor
    """Flat row indexes into a layer viewed as [rows * kv_heads * max_len, head_dim], one per (row, head, token)."""
    first_row: int
    end: int
    """One past the last position any row reads."""
    mask: torch.Tensor
    """[batch, 1, tokens, end]: True where a token may attend."""

    @classmethod
    def build(cls, cache: KVCache, positions: torch.Tensor, first_row: int) -> CacheStep:
        """The addressing of ``positions`` [B, T] in cache rows ``first_row ..``."""
        b, _ = positions.shape
        rows = torch.arange(first_row, first_row + b, device=positions.device)
        heads = torch.arange(cache.kv_heads, device=positions.device)
        base = (rows.view(b, 1, 1) * cache.kv_heads + heads.view(1, -1, 1)) * cache.max_len
        end = int(positions.max().item()) + 1
        span = torch.arange(end, device=positions.device)
        mask = (span.view(1, 1, end) <= positions.unsqueeze(-1)).unsqueeze(1)
        return cls(cache, (base + positions.unsqueeze(1)).reshape(-1), first_row, end, mask)

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``keys``/``values`` [B, kv_heads, T, head_dim] of ``layer``; return the rows' cached prefixes."""
        cached_keys, cached_values = self.cache.keys[layer], self.cache.values[layer]
        dim = cached_keys.shape[-1]
        cached_keys.view(-1, dim).index_copy_(0, self.write_index, keys.reshape(-1, dim).to(cached_keys.dtype))
        cached_values.view(-1, dim).index_copy_(0, self.write_index, values.reshape(-1, dim).to(cached_values.dtype))
        rows = slice(self.first_row, self.first_row + keys.shape[0])
        return cached_keys[rows, :, : self.end], cached_values[rows, :, : self.end]
