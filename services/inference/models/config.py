"""Llama architecture hyper-parameters: parsing and checking a Hugging Face ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
