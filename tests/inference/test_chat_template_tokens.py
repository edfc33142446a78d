"""Chat templates beyond the common case, against transformers' apply_chat_template: every named special token
(``pad_token``, ``unk_token``, ...) reaches the template, read from tokenizer_config.json and the legacy
special_tokens_map.json; a template that refuses the system role (Gemma's) gets the system text at the head of the
first user message instead of refusing every conversation the gateway sends."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from services.inference.chat_template import ChatTemplate, fold_system
from services.inference.models.loader import load_model
from services.inference.server import DEFAULT_MODEL

transformers: Any = importlib.import_module("transformers")  # (as a module object: transformers is partly typed)

GEMMA_2 = (  # google/gemma-2-2b-it's tokenizer_config.json chat_template
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What does yield do?"},
    {"role": "assistant", "content": "It makes a generator."},
    {"role": "user", "content": "And return?"},
]


def hugging_face(template: str, **special: str) -> Any:
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")), chat_template=template, **special
    )


def test_a_template_refusing_the_system_role_gets_it_in_the_first_user_message() -> None:
    ours = ChatTemplate(GEMMA_2, bos_token="<bos>", eos_token="<eos>")
    theirs = hugging_face(GEMMA_2, bos_token="<bos>", eos_token="<eos>")
    with pytest.raises(Exception, match="System role not supported"):
        theirs.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    folded = fold_system(CONVERSATION)
    assert folded[0] == {"role": "user", "content": "Answer in one sentence.\n\nWhat does yield do?"}
    assert ours.folds_system and ours.render(CONVERSATION) == theirs.apply_chat_template(
        folded, tokenize=False, add_generation_prompt=True
    )
    assert ours.render(CONVERSATION).startswith("<bos><start_of_turn>user\nAnswer in one sentence.\n\nWhat does")


def test_a_template_taking_the_system_role_renders_it_as_it_is() -> None:
    plain = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    assert not ChatTemplate(plain).folds_system
    assert ChatTemplate(plain).render(CONVERSATION[:2]) == "[system]Answer in one sentence.[user]What does yield do?"
    assert fold_system([{"role": "system", "content": "Only this."}]) == [{"role": "user", "content": "Only this."}]


def test_every_named_special_token_reaches_the_template_as_transformers_passes_them(tmp_path: Path) -> None:
    template = "{{ bos_token }} {{ pad_token }} {{ unk_token }} {{ eos_token }} {{ mask_token is defined }}"
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model, ignore=shutil.ignore_patterns("chat_template.jinja"))
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("added_tokens_decoder", None)  # transformers then reads the legacy special_tokens_map.json too
    config.update(chat_template=template, pad_token={"__type": "AddedToken", "content": "<|pad|>"})
    (model / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (model / "special_tokens_map.json").write_text(json.dumps({"unk_token": "<|unk|>"}), encoding="utf-8")
    loaded = load_model(model, device="cpu")
    hi = [{"role": "user", "content": "hi"}]
    ours = ChatTemplate(loaded.chat_template, special_tokens=loaded.special_tokens).render(hi)
    theirs = transformers.AutoTokenizer.from_pretrained(str(model)).apply_chat_template(hi, tokenize=False)
    assert ours == theirs and ours.split()[1:3] == ["<|pad|>", "<|unk|>"] and ours.endswith("False")
