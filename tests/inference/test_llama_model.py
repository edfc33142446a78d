"""Tests of the Llama model (KV-cache decoding equals a full forward) and of the Hugging Face layout loader."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from support.tokenizers import byte_level_tokenizer
from tokenizers import Tokenizer

from services.inference.models.llama import LlamaConfig, LlamaForCausalLM
from services.inference.models.loader import LoadedModel, load_model

TEXT = [
    "The with statement is used to wrap the execution of a block with methods defined by a context manager.",
    "A class definition defines a class object. Names bound in the class body become attributes.",
    "héllo — 日本語 🐍 and the import statement finds a module, loading and initializing it if necessary.",
]


def tiny_tokenizer() -> Tokenizer:
    """A small byte-level BPE tokenizer with <|bos|> prepended, like the shipped model's."""
    return byte_level_tokenizer(TEXT, vocab_size=320, prepend_bos=True)


def tiny_config(**overrides: Any) -> LlamaConfig:
    values: dict[str, Any] = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def random_model(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.init_weights(0.2, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # non-trivial norms and biases so a loading mistake shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_model(
    model: LlamaForCausalLM,
    out: Path,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` in Hugging Face layout (optionally sharded with an index)."""
    out.mkdir(parents=True, exist_ok=True)
    tied = model.config.tie_word_embeddings
    state = {
        k: v.detach().to(dtype).contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == "lm_head.weight")
    }
    if shards == 1:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(state)
        weight_map: dict[str, str] = {}
        for i in range(shards):
            part = names[i::shards]
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: state[k] for k in part}, str(out / file), metadata={"format": "pt"})
            weight_map.update({k: file for k in part})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(model.config.to_dict()))
    tiny_tokenizer().save(str(out / "tokenizer.json"))
    for name, content in (extra_files or {}).items():
        (out / name).write_text(json.dumps(content) if not isinstance(content, str) else content)
    return out


def full_logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.inference_mode():
        logits: torch.Tensor = model(ids, positions)
    return logits


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(
        random_model(tiny_config()),
        tmp_path_factory.mktemp("tiny-llama"),
        extra_files={
            "tokenizer_config.json": {"add_bos_token": True, "eos_token": "<|eos|>", "chat_template": "{{ messages }}"}
        },
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_key_value_heads": 4},
        {"num_key_value_heads": 1, "attention_bias": True},
        {"tie_word_embeddings": False, "mlp_bias": True},
        {"head_dim": 24},
    ],
    ids=["gqa", "mha", "mqa-bias", "untied", "head-dim"],
)
def test_incremental_decode_with_cache_equals_full_forward(overrides: dict[str, Any]) -> None:
    model = random_model(tiny_config(**overrides))
    ids = torch.randint(2, 320, (1, 24), generator=torch.Generator().manual_seed(1))
    expected = full_logits(model, ids)
    cache = model.new_cache()
    with torch.inference_mode():
        pieces = [model(ids[:, :10], torch.arange(10).unsqueeze(0), cache)]  # prefill
        pieces.append(model(ids[:, 10:15], torch.arange(10, 15).unsqueeze(0), cache))  # a second chunk
        for i in range(15, 24):  # then one token per step
            pieces.append(model(ids[:, i : i + 1], torch.tensor([[i]]), cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-5, rtol=1e-4)


def test_batched_cache_rows_are_independent() -> None:
    model = random_model(tiny_config())
    ids = torch.randint(2, 320, (2, 12), generator=torch.Generator().manual_seed(2))
    expected = full_logits(model, ids)
    cache = model.new_cache(batch=2, max_len=12)
    with torch.inference_mode():
        first = model(ids[:, :8], torch.arange(8).expand(2, 8), cache)
        rest = [model(ids[:, i : i + 1], torch.tensor([[i], [i]]), cache) for i in range(8, 12)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), expected, atol=1e-5, rtol=1e-4)


def test_last_only_returns_the_final_position() -> None:
    model = random_model(tiny_config())
    ids = torch.randint(2, 320, (1, 9))
    with torch.inference_mode():
        last = model(ids, torch.arange(9).unsqueeze(0), last_only=True)
    assert last.shape == (1, 1, 320)
    torch.testing.assert_close(last[0, 0], full_logits(model, ids)[0, -1])


def test_rope_theta_changes_the_logits() -> None:
    base = random_model(tiny_config())
    other = LlamaForCausalLM(tiny_config(rope_theta=500000.0)).eval()
    other.load_state_dict(base.state_dict())
    ids = torch.randint(2, 320, (1, 16), generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(full_logits(base, ids), full_logits(other, ids), atol=1e-4)


def test_parameter_names_match_hugging_face_llama() -> None:
    names = set(LlamaForCausalLM(tiny_config(tie_word_embeddings=False, attention_bias=True)).state_dict())
    assert {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
    } <= names
    assert not any("rotary" in n for n in names)


def test_cache_position_beyond_length_is_rejected() -> None:
    model = random_model(tiny_config())
    cache = model.new_cache(max_len=4)
    with pytest.raises(ValueError, match="beyond the cache length"):
        model(torch.tensor([[5]]), torch.tensor([[4]]), cache)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_attention_heads": 3, "num_key_value_heads": 3}, "divisible"),
        ({"num_key_value_heads": 3}, "multiple"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling"),
        ({"rms_norm_eps": 0}, "rms_norm_eps"),
    ],
)
def test_config_validation_raises_value_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_round_trips_through_hugging_face_json() -> None:
    config = tiny_config(
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        }
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["model_type"] == "llama" and data["architectures"] == ["LlamaForCausalLM"]
    assert LlamaConfig.from_dict(data).to_dict() == data
    v5 = {k: v for k, v in data.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**config.rope_scaling, "rope_theta": 123.0} if config.rope_scaling else {}
    parsed = LlamaConfig.from_dict(v5)  # the transformers 5 spelling
    assert parsed.rope_theta == 123.0 and parsed.rope_scaling == config.rope_scaling
    with pytest.raises(ValueError, match="missing required keys"):
        LlamaConfig.from_dict({"model_type": "llama", "vocab_size": 10})
    with pytest.raises(ValueError, match="not a Llama"):
        LlamaConfig.from_dict({**data, "model_type": "gpt2"})


def test_load_model_reproduces_the_saved_logits(tiny_dir: Path) -> None:
    loaded = load_model(tiny_dir, device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == tiny_dir.name and loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.context_length == 64 and loaded.eos_token_ids == [1] and loaded.bos_token_id == 0
    assert loaded.chat_template == "{{ messages }}"
    assert (loaded.bos_token, loaded.eos_token) == (None, "<|eos|>")  # as text, for the chat template
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    ids = torch.randint(2, 320, (1, 20), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(full_logits(loaded.model, ids), full_logits(random_model(tiny_config()), ids))


def test_encode_prompt_prepends_bos_once(tiny_dir: Path) -> None:
    loaded = load_model(tiny_dir, device="cpu")
    ids = loaded.encode_prompt("The with statement")
    assert ids[0] == 0 and ids[1] != 0
    assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == "The with statement"
    # a rendered chat template holds its BOS already: nothing is added
    assert loaded.encode_rendered("<|bos|>The with statement") == ids
    assert loaded.encode_rendered("The with statement") == ids[1:]


@pytest.mark.parametrize("untied", [False, True])
def test_load_sharded_half_precision_checkpoint(tmp_path: Path, untied: bool) -> None:
    model = random_model(tiny_config(tie_word_embeddings=not untied))
    path = save_model(
        model,
        tmp_path / "sharded",
        dtype=torch.float16,
        shards=3,
        extra_files={"generation_config.json": {"eos_token_id": [1, 5], "bos_token_id": 0}},
    )
    loaded = load_model(path, device="cpu")
    assert loaded.dtype == torch.float32 and next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.eos_token_ids == [1, 5]
    reference = LlamaForCausalLM(model.config).eval()
    reference.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    ids = torch.randint(2, 320, (1, 12))
    torch.testing.assert_close(full_logits(loaded.model, ids), full_logits(reference, ids))


def test_loader_errors(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model(empty)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(empty)
    (empty / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_model(empty)
    (empty / "tokenizer.json").write_text((tiny_dir / "tokenizer.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        load_model(empty)


def test_loader_rejects_mismatched_weights(tmp_path: Path) -> None:
    model = random_model(tiny_config())
    path = save_model(model, tmp_path / "bad")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(ValueError, match="shape"):
        load_model(path, device="cpu")
    (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="missing"):
        load_model(path, device="cpu")
    (path / "config.json").write_text(json.dumps({**config, "num_attention_heads": 5}))
    with pytest.raises(ValueError, match="num_attention_heads"):
        load_model(path, device="cpu")


def test_hugging_face_transformers_gives_the_same_logits(tiny_dir: Path) -> None:
    # A dev dependency, imported for real: the README's parity claim rests on this test, so it never skips.
    transformers = importlib.import_module("transformers")  # (as a module object: transformers is partly typed)
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(tiny_dir), torch_dtype=torch.float32).eval()
    ours = load_model(tiny_dir, device="cpu").model
    ids = torch.randint(2, 320, (1, 20), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = theirs(input_ids=ids).logits
    torch.testing.assert_close(full_logits(ours, ids), expected, atol=1e-4, rtol=1e-4)


def test_chat_template_jinja_overrides_the_tokenizer_config_like_transformers(tmp_path: Path, tiny_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    jinja = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    (model / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    loaded = load_model(model, device="cpu")
    assert (loaded.chat_template, loaded.chat_template_file) == (jinja, model / "chat_template.jinja")
    transformers = importlib.import_module("transformers")
    assert transformers.AutoTokenizer.from_pretrained(str(model)).chat_template == jinja
    assert load_model(tiny_dir, device="cpu").chat_template_file == tiny_dir / "tokenizer_config.json"
