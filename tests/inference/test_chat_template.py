"""The chat template renderer against transformers' apply_chat_template on real models' tokenizer configs.

The fixtures are the ``chat_template``, ``bos_token`` and ``eos_token`` fields of the models' tokenizer_config.json,
transcribed from openvinotoolkit/openvino.genai (tests/python_tests/data/tokenizer_configs.py at da1db864d, a
collection of the Hub's configs). Its Qwen entry is Qwen2.5-3B-Instruct's; the template is character for character
ggerganov/llama.cpp's copy of Qwen2.5-7B-Instruct's (tests/chat/templates/Qwen-Qwen2.5-7B-Instruct.jinja at eaca756):
the Qwen2.5 Instruct models share it, with no BOS token and <|im_end|> as EOS.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from gateway.prompt import PromptPassage, conversation
from genmesh.errors import InvalidArgument
from genmesh.messages import template_messages
from services.inference.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate, special_token

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama"
transformers = importlib.import_module("transformers")  # (as a module object: transformers is partly typed)


@dataclass(frozen=True)
class TokenizerConfig:
    """The fields of a tokenizer_config.json that rendering reads."""

    name: str
    bos_token: str | None
    eos_token: str | None
    chat_template: str


LLAMA_3 = TokenizerConfig(
    name="meta-llama/Meta-Llama-3-8B-Instruct",
    bos_token="<|begin_of_text|>",
    eos_token="<|eot_id|>",
    chat_template=r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %}""",  # noqa: E501
)

QWEN_2_5 = TokenizerConfig(
    name="Qwen/Qwen2.5-7B-Instruct",
    bos_token=None,
    eos_token="<|im_end|>",
    chat_template=r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""",  # noqa: E501
)

MISTRAL = TokenizerConfig(
    name="mistralai/Mistral-7B-Instruct-v0.3",
    bos_token="<s>",
    eos_token="</s>",
    chat_template=r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
""",  # noqa: E501
)

MODELS = [LLAMA_3, QWEN_2_5, MISTRAL]

SYSTEM_AND_USER = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What does the with statement do?"},
]
USER_ONLY = [{"role": "user", "content": "  Hello, who are you?  "}]
MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a Python keyword."},
    {"role": "assistant", "content": "yield"},
    {"role": "user", "content": "And another, with ünïcode: 日本語?"},
]
ENDS_WITH_ASSISTANT = [
    {"role": "user", "content": "2 + 2?"},
    {"role": "assistant", "content": "4"},
]
CONVERSATIONS = {
    "system+user": SYSTEM_AND_USER,
    "user": USER_ONLY,
    "multi-turn": MULTI_TURN,
    "ends-with-assistant": ENDS_WITH_ASSISTANT,
}


def hugging_face(config: TokenizerConfig) -> Any:
    """A transformers tokenizer carrying ``config``'s template and special tokens (a one-word vocabulary: rendering
    needs no real one)."""
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
        bos_token=config.bos_token,
        eos_token=config.eos_token,
        chat_template=config.chat_template,
    )


def ours(config: TokenizerConfig) -> ChatTemplate:
    return ChatTemplate(config.chat_template, config.bos_token, config.eos_token)


@pytest.mark.parametrize("add_generation_prompt", [True, False], ids=["generation-prompt", "no-generation-prompt"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS), ids=list(CONVERSATIONS))
@pytest.mark.parametrize("config", MODELS, ids=[m.name for m in MODELS])
def test_renders_what_transformers_renders(
    config: TokenizerConfig, conversation: str, add_generation_prompt: bool
) -> None:
    messages = CONVERSATIONS[conversation]
    expected = hugging_face(config).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours(config).render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_the_prompts_are_the_models_documented_formats() -> None:
    """Pinned independently of transformers, so that both drifting together would still fail."""
    assert ours(LLAMA_3).render(SYSTEM_AND_USER) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou answer in one sentence.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat does the with statement do?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert ours(QWEN_2_5).render(USER_ONLY) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n  Hello, who are you?  <|im_end|>\n<|im_start|>assistant\n"
    )
    assert ours(MISTRAL).render(MULTI_TURN, add_generation_prompt=False) == (
        "<s>[INST] Name a Python keyword.[/INST] yield</s>[INST] Be brief.\n\nAnd another, with ünïcode: 日本語?[/INST]"
    )


def test_tool_calls_and_results_render_as_transformers_renders_them() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "What is 6 * 7?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": {"x": "6*7"}}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"value": 42}'},
    ]
    expected = hugging_face(QWEN_2_5).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = ours(QWEN_2_5).render(messages)
    assert rendered == expected
    assert '<tool_call>\n{"name": "calculator", "arguments": {"x": "6*7"}}\n</tool_call>' in rendered


def test_a_conversation_the_template_refuses_is_invalid_argument_naming_messages() -> None:
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception, match="must alternate"):
        hugging_face(MISTRAL).apply_chat_template(two_users, tokenize=False)
    with pytest.raises(InvalidArgument) as raised:
        ours(MISTRAL).render(two_users)
    [violation] = raised.value.violations
    assert violation.field == "messages"
    assert "conversation roles must alternate user/assistant" in violation.description


def test_a_template_failing_on_a_message_is_invalid_argument_too() -> None:
    """Qwen's template adds strings: content as a list of parts fails inside the template (a TypeError there)."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    with pytest.raises(TypeError):
        hugging_face(QWEN_2_5).apply_chat_template(parts, tokenize=False)
    with pytest.raises(InvalidArgument) as raised:
        ours(QWEN_2_5).render(parts)
    assert raised.value.violations[0].field == "messages"
    assert "concatenate" in raised.value.violations[0].description


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.append('x') }}",
        "{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}",
        "{% set ns = namespace(_hidden=1) %}{{ ns._hidden }}",
        "{% set ns = namespace(a=1) %}{% set ns._b = 2 %}",
    ],
    ids=["mutation", "dunder", "namespace-underscore", "namespace-set-underscore"],
)
def test_the_sandbox_refuses_what_hugging_face_refuses(source: str) -> None:
    with pytest.raises(InvalidArgument):
        ChatTemplate(source).render(USER_ONLY)


def test_tojson_and_strftime_now_are_hugging_faces() -> None:
    source = (
        "{{ messages | tojson }}|{{ {'b': '<&>', 'a': 'é'} | tojson(indent=2, sort_keys=True) }}"
        "|{{ strftime_now('%Y') }}"
    )
    rendered = ChatTemplate(source).render(USER_ONLY)
    transformers_says = hugging_face(TokenizerConfig("t", None, None, source)).apply_chat_template(
        USER_ONLY, tokenize=False
    )
    assert rendered == transformers_says
    as_json, sorted_json, year = rendered.split("|")
    assert json.loads(as_json) == USER_ONLY
    assert sorted_json == '{\n  "a": "é",\n  "b": "<&>"\n}'
    assert year == str(datetime.now().year)


def test_trim_blocks_lstrip_blocks_loop_controls_and_generation_blocks_as_hugging_face_compiles_them() -> None:
    source = (
        "{% for m in messages %}\n"
        "    {% if loop.index0 > 0 %}{% break %}{% endif %}\n"
        "    {% generation %}[{{ m['content'] }}]{% endgeneration %}\n"
        "{% endfor %}"
    )
    conversation = MULTI_TURN
    expected = hugging_face(TokenizerConfig("t", None, None, source)).apply_chat_template(conversation, tokenize=False)
    assert ChatTemplate(source).render(conversation) == expected == "[Be brief.]"


def test_a_template_that_does_not_compile_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="does not compile: line 1"):
        ChatTemplate("{% for m in messages %}")


def test_the_default_template_is_genmeshs_question_answer_prompt() -> None:
    default = ChatTemplate(None, "<|bos|>", "<|eos|>")
    assert default.is_default and default.source == DEFAULT_CHAT_TEMPLATE
    question = "What does the with statement do?"
    assert default.render([{"role": "user", "content": question}]) == f"<|bos|>Question: {question}\nAnswer:"
    assert default.render(MULTI_TURN, add_generation_prompt=False) == (
        "<|bos|>Be brief.\n\nQuestion: Name a Python keyword.\nAnswer: yield\n\n"
        "Question: And another, with ünïcode: 日本語?\n"
    )
    assert ChatTemplate(None).render(USER_ONLY) == "Question:   Hello, who are you?  \nAnswer:"


def test_the_shipped_model_has_a_template_giving_the_prompt_it_was_always_given() -> None:
    config = json.loads((SHIPPED_MODEL / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = ChatTemplate(
        config["chat_template"], special_token(config["bos_token"]), special_token(config["eos_token"])
    )
    tokenizer = Tokenizer.from_file(str(SHIPPED_MODEL / "tokenizer.json"))
    question = "What does the with statement do?"
    passages = [PromptPassage("with", "The with statement wraps a block.  "), PromptPassage("as", "It binds a name.")]
    # the text prompt the gateway built before it sent messages: passages, a blank line, then the question
    before = "with\nThe with statement wraps a block.\n\nas\nIt binds a name.\n\nQuestion: " + question + "\nAnswer:"
    for sent, today in [(passages, before), ([], f"Question: {question}\nAnswer:")]:
        messages, _ = conversation(question, [], sent, [], budget_chars=10_000)
        rendered = template.render(template_messages(messages))
        as_today = tokenizer.encode(today, add_special_tokens=True).ids
        assert tokenizer.encode(rendered, add_special_tokens=False).ids == as_today
        assert as_today[0] == tokenizer.token_to_id("<|bos|>")


def test_special_tokens_are_read_as_tokenizer_config_writes_them() -> None:
    assert special_token("<s>") == "<s>"
    assert special_token({"__type": "AddedToken", "content": "<s>", "lstrip": False}) == "<s>"
    assert special_token(None) is None
