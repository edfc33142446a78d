"""A Llama decoder in plain torch whose parameter names match Hugging Face ``LlamaForCausalLM``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(slots=True)
class LlamaConfig:
    """Architecture hyper-parameters, named as in a Hugging Face ``config.json`` of ``model_type`` llama."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    torch_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "num_key_value_heads",
        ):
            value = getattr(self, name)
            if name == "num_key_value_heads" and value is None:
                self.num_key_value_heads = value = self.num_attention_heads
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"config {name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.kv_heads != 0:
            raise ValueError(
                f"config num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.kv_heads})"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"config hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}) when head_dim is not given"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim <= 0:
            raise ValueError(f"config head_dim must be a positive integer, got {self.head_dim!r}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"config head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise ValueError(f"config rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise ValueError(f"config rope_theta must be positive, got {self.rope_theta!r}")
        if self.hidden_act != "silu":
            raise ValueError(f"config hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict):
                raise ValueError(f"config rope_scaling must be an object or null, got {self.rope_scaling!r}")
            rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if rope_type not in _ROPE_TYPES:
                raise ValueError(f"config rope_scaling type {rope_type!r} is not supported ({', '.join(_ROPE_TYPES)})")
            if rope_type != "default" and not float(self.rope_scaling.get("factor", 0)) > 0:
                raise ValueError("config rope_scaling.factor must be positive")

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (resolved; equals the attention heads without GQA)."""
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        """The resolved size of one attention head."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def eos_token_ids(self) -> list[int]:
        """``eos_token_id`` as a list (empty when unset)."""
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlamaConfig:
        """Build from a parsed ``config.json``; unknown keys are kept in ``extra``.

        Understands both the transformers 4 keys (``rope_theta``, ``rope_scaling``, ``torch_dtype``) and
        the transformers 5 ones (``rope_parameters``, ``dtype``).
        """
        if not isinstance(data, dict):
            raise ValueError("config must be a JSON object")
        data = dict(data)
        rope = data.pop("rope_parameters", None)
        if isinstance(rope, dict):
            data["rope_theta"] = rope.get("rope_theta", data.get("rope_theta", 10000.0))
            if rope.get("rope_type", rope.get("type", "default")) != "default":
                data["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        elif rope is not None:
            raise ValueError(f"config rope_parameters must be an object, got {rope!r}")
        if "torch_dtype" not in data and isinstance(data.get("dtype"), str):
            data["torch_dtype"] = data.pop("dtype")
        model_type = data.get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(f"config model_type {model_type!r} is not a Llama architecture")
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        missing = [
            n
            for n in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
            if n not in data
        ]
        if missing:
            raise ValueError(f"config is missing required keys: {', '.join(missing)}")
        known = {k: v for k, v in data.items() if (k in names and v is not None) or k in ("rope_scaling", "head_dim")}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` form, including the keys transformers expects."""
        out: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
        }
        out.update(self.extra)
        for name in self.__dataclass_fields__:
            if name != "extra":
                out[name] = getattr(self, name)
        return out


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
            keys, values = step.store(self.layer, k, v)
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

        q [B, heads, 1, head_dim], keys/values [B, kv_heads, end, head_dim], mask [B, 1, 1, end].
        """
        b = q.shape[0]
        grouped = q.reshape(b, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(self.scale)
        scores.masked_fill_(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), values)
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
        self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache | None, first_row: int = 0
    ) -> torch.Tensor:
        """Final hidden states [B, T, hidden] of ``input_ids`` at ``positions``."""
        x = self.embed_tokens(input_ids)
        rope = self.rotary_emb(positions, x.dtype)
        step = None if cache is None else CacheStep.build(cache, positions, first_row)
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

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        """A zeroed cache on the model's device and dtype, holding up to ``max_len`` (default: context) tokens."""
        weight = self.model.embed_tokens.weight
        return KVCache(self.config, batch, max_len or self.config.max_position_embeddings, weight.device, weight.dtype)

    def num_parameters(self) -> int:
        """Distinct parameter count (tied matrices counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        first_row: int = 0,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] (or [B, 1, vocab] with ``last_only``) for ``input_ids`` at ``positions`` [B, T].

        Without a cache the T tokens of a row attend causally to each other (positions must increase along
        a row). With a cache their keys and values are written at ``positions`` and each token attends to
        every cached position up to its own, so a prompt can be fed once and then one token per step.
        Batch row i reads and writes cache row ``first_row + i``, so a batch can be any block of cache rows.
        """
        if input_ids.shape != positions.shape or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and positions {tuple(positions.shape)} "
                "must both be [batch, tokens]"
            )
        if cache is not None and int(positions.max().item()) >= cache.max_len:
            raise ValueError(f"position {int(positions.max().item())} is beyond the cache length {cache.max_len}")
        if cache is not None and not 0 <= first_row <= cache.batch - input_ids.shape[0]:
            raise ValueError(f"rows {first_row}..{first_row + input_ids.shape[0] - 1} are outside the cache")
        hidden = self.model(input_ids, positions, cache, first_row)
        if last_only:
            hidden = hidden[:, -1:]
        logits: torch.Tensor = self.lm_head(hidden)
        return logits
