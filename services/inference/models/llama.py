"""A Llama decoder in plain torch whose parameter names match Hugging Face ``LlamaForCausalLM``.

The configuration lives in ``config.py`` and the key/value cache in ``kv_cache.py``; both are
re-exported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from services.inference.models.config import LlamaConfig
from services.inference.models.kv_cache import CacheStep, DecodeRows, KVCache

__all__ = [
    "MLP",
    "Attention",
    "CacheStep",
    "DecodeRows",
    "DecoderLayer",
    "KVCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "LlamaModel",
    "RMSNorm",
    "RotaryEmbedding",
    "rope_inverse_frequencies",
]


class RMSNorm(nn.Module):
    """Root-mean-square layer norm computed in float32, as in Hugging Face ``LlamaRMSNorm``."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension and scale it."""
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inverse_frequencies(config: LlamaConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """The rotary inverse frequencies (float32) for ``rope_theta`` and any supported ``rope_scaling``."""
    dim = config.dim_per_head
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float32) / dim
    inv = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        inv = inv / float(scaling["factor"])
    elif rope_type == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for every position up to the context length."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.reset(torch.device("cpu"))

    def reset(self, device: torch.device | str) -> None:
        """(Re)compute the tables on ``device``; needed after building the model on the meta device."""
        inv = rope_inverse_frequencies(self.config, device)
        t = torch.arange(self.config.max_position_embeddings, device=device, dtype=torch.int64).to(torch.float32)
        freqs = torch.outer(t, inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos()
        self.sin = emb.sin()

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape [B, 1, T, head_dim] for ``positions`` [B, T]."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary position embeddings."""

    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.heads = config.num_attention_heads
        self.kv_heads = config.kv_heads
        self.head_dim = config.dim_per_head
        self.scale = self.head_dim**-0.5
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], step: CacheStep | None) -> torch.Tensor:
        """Attend each token to itself and every earlier position (from the cache when ``step`` is given)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        qk = torch.cat((q, k), dim=2).transpose(1, 2)  # rotate queries and keys in one pass
        qk = qk * cos + _rotate_half(qk) * sin
        q, k = qk[:, : self.heads], qk[:, self.heads :]
        if step is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=self.kv_heads != self.heads)
        else:
            keys, values = step.store(self.layer, k, v)  # [B, kv_heads, L, head_dim]
            if t == 1:
                out = self._decode_attention(q, keys, values, step.mask)
            else:
                out = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=step.mask, enable_gqa=self.kv_heads != self.heads
                )
        projected: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        return projected

    def _decode_attention(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """One query token per row: each kv head's group of query heads in one small matmul, no kv copies.

        q [B, heads, 1, head_dim], keys/values [B, kv_heads, end, head_dim], mask [B, 1, 1, end]. The matmuls
        batch over (B, kv_heads) in the order the keys lie in memory (rows outermost for decode rows, heads
        outermost for a gather of blocks), so that neither needs a copy to flatten its batch dimensions.
        """
        b = q.shape[0]
        grouped = q.reshape(b, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        heads_outer = keys.stride(1) > keys.stride(0)
        if heads_outer:
            grouped, keys, values, mask = (x.transpose(0, 1) for x in (grouped, keys, values, mask))
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(self.scale)
        scores.masked_fill_(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), values)
        if heads_outer:
            out = out.transpose(0, 1)
        return out.reshape(b, self.heads, 1, self.head_dim)


class MLP(nn.Module):
    """The SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP with residual connections."""

    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], step: CacheStep | None) -> torch.Tensor:
        """Apply the layer."""
        x = x + self.self_attn(self.input_layernorm(x), rope, step)
        out: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out


class LlamaModel(nn.Module):
    """The decoder stack (``model.*`` in a Hugging Face checkpoint)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None,
        tables: torch.Tensor | None,
        step: CacheStep | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, hidden] of ``input_ids`` at ``positions`` (``tables``: with ``cache``;
        ``step``: a cache addressing built by the caller instead)."""
        x = self.embed_tokens(input_ids)
        rope = self.rotary_emb(positions, x.dtype)
        if step is None and cache is not None and tables is not None:
            step = CacheStep.build(cache, positions, tables)
        for layer in self.layers:
            x = layer(x, rope, step)
        out: torch.Tensor = self.norm(x)
        return out


class LlamaForCausalLM(nn.Module):
    """Llama with a language-model head; ``state_dict()`` keys equal those of Hugging Face checkpoints."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the output head when ``tie_word_embeddings`` is set."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Random initialisation as in Hugging Face: normal(0, std) weights, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std, generator=generator)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def new_cache(self, batch: int = 1, max_len: int | None = None, block_size: int = 16) -> KVCache:
        """A zeroed paged cache on the model's device and dtype whose default tables give each of ``batch`` rows
        ``max_len`` (default: context) positions in contiguous blocks."""
        weight = self.model.embed_tokens.weight
        length = max_len or self.config.max_position_embeddings
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"KVCache max_len {length} exceeds the context length {self.config.max_position_embeddings}"
            )
        per_row = -(-length // block_size)
        return KVCache(
            self.config, batch * per_row, block_size, weight.device, weight.dtype, rows=batch, max_len=length
        )

    def new_paged_cache(self, num_blocks: int, block_size: int) -> KVCache:
        """A zeroed pool of ``num_blocks`` blocks for the engine, which addresses it through block tables."""
        weight = self.model.embed_tokens.weight
        return KVCache(self.config, num_blocks, block_size, weight.device, weight.dtype)

    def num_parameters(self) -> int:
        """Distinct parameter count (tied matrices counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        tables: torch.Tensor | None = None,
        step: CacheStep | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] (or [B, 1, vocab] with ``last_only``) for ``input_ids`` at ``positions`` [B, T].

        Without a cache the T tokens of a row attend causally to each other (positions must increase along
        a row). With a cache their keys and values are written at ``positions`` and each token attends to
        every cached position up to its own, so a prompt can be fed once and then one token per step.
        ``tables`` [B, blocks] name each batch row's cache blocks and must cover its largest position (the
        engine's runner sizes them; not checked, to keep the pass free of device syncs); without them row i
        uses the cache's default contiguous rows. ``step`` (the engine's decode rows, ``CacheStep.decode``)
        replaces ``cache`` and ``tables``.
        """
        if input_ids.shape != positions.shape or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and positions {tuple(positions.shape)} "
                "must both be [batch, tokens]"
            )
        if cache is not None and tables is None and step is None:
            end = int(positions.max().item()) + 1
            if end > cache.max_len:
                raise ValueError(f"position {end - 1} is beyond the cache length {cache.max_len}")
            if input_ids.shape[0] > cache.default_tables.shape[0]:
                raise ValueError(
                    f"a batch of {input_ids.shape[0]} rows exceeds the cache's {cache.default_tables.shape[0]}"
                )
            tables = cache.default_tables[: input_ids.shape[0], : -(-end // cache.block_size)]
        hidden = self.model(input_ids, positions, cache, tables, step)
        if last_only:
            hidden = hidden[:, -1:]
        logits: torch.Tensor = self.lm_head(hidden)
        return logits
