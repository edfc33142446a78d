"""Load a Llama model, its tokenizer and generation settings from a Hugging Face layout directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from services.inference.chat_template import SPECIAL_TOKEN_NAMES, special_token
from services.inference.models.config import LlamaConfig
from services.inference.models.llama import LlamaForCausalLM

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(slots=True)
class LoadedModel:
    """A model ready for inference together with everything needed to tokenize and stop generation."""

    model: LlamaForCausalLM
    tokenizer: Tokenizer
    config: LlamaConfig
    eos_token_ids: list[int]
    bos_token_id: int | None
    add_bos_token: bool
    chat_template: str | None
    name: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    context_length: int
    bos_token: str | None = None
    """The BOS and EOS tokens as text (tokenizer_config.json), as chat templates see them."""
    eos_token: str | None = None
    chat_template_file: Path | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    """The named special tokens as text (``pad_token``, ``unk_token``, ...), as chat templates see them."""
    """Where ``chat_template`` was read (chat_template.jinja or tokenizer_config.json); None without one."""

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model expects a prompt: with BOS first when the tokenizer asks for it."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=True).ids
        if self.add_bos_token and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    def encode_rendered(self, text: str) -> list[int]:
        """Token ids of a rendered chat template, which holds its special tokens already: nothing is added."""
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it (float16 otherwise), float32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path.name} not found in model directory {path.parent}")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, required=True).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map")
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"shards listed in {index.name} are missing: {', '.join(missing)}")
        return files
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def _token_id(tokenizer: Tokenizer, token: Any) -> int | None:
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    found: int | None = tokenizer.token_to_id(token)
    return found


def _as_ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _chat_template(path: Path, tokenizer_config: dict[str, Any]) -> tuple[str | None, Path | None]:
    """The model's chat template and the file it is in: chat_template.jinja when there is one (it overrides
    tokenizer_config.json's, as in transformers), else tokenizer_config.json's ``chat_template`` ("default" of a
    named list)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), jinja
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if isinstance(template, str):
        return template, path / "tokenizer_config.json"
    return None, None


def _special_tokens(path: Path, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """The named special tokens, as transformers' ``special_tokens_map``: tokenizer_config.json's, and the legacy
    special_tokens_map.json's for those it lacks."""
    legacy = _read_json(path / "special_tokens_map.json", required=False)
    found: dict[str, str] = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = special_token(tokenizer_config.get(name))
        value = value if value is not None else special_token(legacy.get(name))
        if value is not None:
            found[name] = value
    return found


def load_state_dict(files: list[Path], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Read safetensors shards into one state dict cast to ``dtype`` on ``device``."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(str(file), device=str(device)).items():
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return state


def build_model(config: LlamaConfig, state: dict[str, torch.Tensor], device: torch.device) -> LlamaForCausalLM:
    """A model whose parameters are exactly the tensors of ``state`` (no random initialisation)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    expected = set(model.state_dict())
    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(expected - set(state) - optional)
    unexpected = sorted(set(state) - expected)
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} weights, e.g. {', '.join(missing[:5])}")
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} unexpected weights, e.g. {', '.join(unexpected[:5])}")
    shapes = model.state_dict()
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(shapes[name].shape):
            want = tuple(shapes[name].shape)
            raise ValueError(f"weight {name} has shape {tuple(tensor.shape)}, but the config implies {want}")
    if config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.model.rotary_emb.reset(device)
    return model.eval()


def load_model(path: Path | str, device: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load the model directory ``path`` (config.json, safetensors weights, tokenizer.json).

    ``generation_config.json`` and ``tokenizer_config.json`` are read when present for the EOS ids, the BOS id,
    whether to prepend BOS and the chat template. Raises FileNotFoundError for a missing directory or file
    and ValueError for malformed contents.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    config = LlamaConfig.from_dict(_read_json(path / "config.json", required=True))
    tokenizer_path = path / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"tokenizer.json not found in model directory {path}")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"{tokenizer_path} is not a valid tokenizer: {exc}") from exc
    generation = _read_json(path / "generation_config.json", required=False)
    tok_config = _read_json(path / "tokenizer_config.json", required=False)

    torch_device = torch.device(device) if device is not None else default_device()
    torch_dtype = dtype or default_dtype(torch_device)
    model = build_model(config, load_state_dict(_weight_files(path), torch_dtype, torch_device), torch_device)

    eos: list[int] = []
    for candidate in (
        *_as_ids(generation.get("eos_token_id")),
        *config.eos_token_ids,
        _token_id(tokenizer, tok_config.get("eos_token")),
    ):
        if candidate is not None and candidate not in eos:
            eos.append(candidate)
    bos_candidates = [
        *_as_ids(generation.get("bos_token_id")),
        *_as_ids(config.bos_token_id),
        _token_id(tokenizer, tok_config.get("bos_token")),
    ]
    bos = next((b for b in bos_candidates if b is not None), None)
    template, template_file = _chat_template(path, tok_config)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        eos_token_ids=eos,
        bos_token_id=bos,
        add_bos_token=bool(tok_config.get("add_bos_token", False)),
        chat_template=template,
        chat_template_file=template_file,
        name=path.resolve().name,
        path=path,
        device=torch_device,
        dtype=torch_dtype,
        context_length=config.max_position_embeddings,
        bos_token=special_token(tok_config.get("bos_token")),
        eos_token=special_token(tok_config.get("eos_token")),
        special_tokens=_special_tokens(path, tok_config),
    )
