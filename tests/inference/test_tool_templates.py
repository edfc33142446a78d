"""Tools in chat templates: the Qwen2.5 and Llama 3.3 templates render a request's tools, assistant tool calls and
tool results as transformers' ``apply_chat_template(..., tools=...)`` does; the default template renders them in
the Hermes format it asks for, and nothing changes without tools; the call format follows from the template.

Llama-3.3-70B-Instruct's template is vendored in templates/ (provenance in templates/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genmesh.messages import template_messages
from genmesh.v1 import common_pb2, inference_pb2
from inference.test_chat_template import LLAMA_3, MISTRAL, QWEN_2_5, TokenizerConfig, hugging_face, ours
from services.inference.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from services.inference.tool_calls import detect_format
from services.inference.tool_calls.request import tool_request_from_proto

LLAMA_3_3 = TokenizerConfig(
    name="meta-llama/Llama-3.3-70B-Instruct",
    bos_token="<|begin_of_text|>",
    eos_token="<|eot_id|>",
    chat_template=(Path(__file__).parent / "templates" / "meta-llama-Llama-3.3-70B-Instruct.jinja").read_text(),
)

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}


def _message(role: common_pb2.Role.ValueType, text: str = "", **fields: Any) -> common_pb2.ChatMessage:
    content = [common_pb2.ContentPart(text=text)] if text else []
    return common_pb2.ChatMessage(role=role, content=content, **fields)


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> common_pb2.ToolCall:
    return common_pb2.ToolCall(call_id=call_id, name=name, arguments_json=json.dumps(arguments))


def _request(messages: list[common_pb2.ChatMessage]) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        messages=messages,
        tools=[
            common_pb2.FunctionDeclaration(
                name="get_weather", description="The weather in a city.", parameters_json_schema=json.dumps(WEATHER)
            ),
            common_pb2.FunctionDeclaration(name="now", description="The time (no arguments)."),
        ],
    )


def _tools_and_messages(messages: list[common_pb2.ChatMessage]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The template's ``tools`` and ``messages`` as the inference server builds them from a request."""
    request = _request(messages)
    tools = tool_request_from_proto(request)
    assert tools is not None
    return tools.template_tools(), template_messages(request.messages)


FIRST_TURN = [
    _message(common_pb2.ROLE_SYSTEM, "Answer briefly."),
    _message(common_pb2.ROLE_USER, "Weather in Paris?"),
]


def _history(calls: int) -> list[common_pb2.ChatMessage]:
    """A first turn, the assistant's ``calls`` calls, and their results."""
    made = [_call(f"call_{i}", "get_weather", {"city": city}) for i, city in enumerate(["Paris", "Lyon"][:calls])]
    results = [
        _message(common_pb2.ROLE_TOOL, json.dumps({"temp": 20 + i}), tool_call_id=c.call_id) for i, c in enumerate(made)
    ]
    return [*FIRST_TURN, _message(common_pb2.ROLE_ASSISTANT, tool_calls=made), *results]


@pytest.mark.parametrize("config", [QWEN_2_5, LLAMA_3_3], ids=lambda c: c.name)
@pytest.mark.parametrize("calls", [0, 1], ids=["first-turn", "after-a-call"])
def test_tools_render_as_transformers_renders_them(config: TokenizerConfig, calls: int) -> None:
    tools, messages = _tools_and_messages(_history(calls) if calls else FIRST_TURN)
    expected = hugging_face(config).apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    rendered = ours(config).render(messages, tools=tools)
    assert rendered == expected
    assert '"name": "get_weather"' in rendered and "The weather in a city." in rendered


def test_parallel_calls_and_their_results_render_as_transformers_renders_them_in_qwen() -> None:
    tools, messages = _tools_and_messages(_history(2))
    expected = hugging_face(QWEN_2_5).apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    rendered = ours(QWEN_2_5).render(messages, tools=tools)
    assert rendered == expected
    assert rendered.count("<tool_response>") == 2 and rendered.count("<tool_call>\n") == 3  # 2 calls + the instruction


def test_llama_3_3_writes_calls_as_its_json_and_tools_in_the_first_user_message() -> None:
    tools, messages = _tools_and_messages(_history(1))
    rendered = ours(LLAMA_3_3).render(messages, tools=tools)
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in rendered
    assert "<|start_header_id|>ipython<|end_header_id|>" in rendered
    assert rendered.index('"name": "get_weather"') < rendered.index("Weather in Paris?")


def test_the_template_tools_are_transformers_json_schema_tools() -> None:
    tools, _ = _tools_and_messages(FIRST_TURN)
    assert tools == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER},
        },
        {
            "type": "function",
            "function": {"name": "now", "description": "The time (no arguments).", "parameters": {"type": "object"}},
        },
    ]


def test_the_default_template_lists_the_tools_and_asks_for_hermes_calls() -> None:
    tools, messages = _tools_and_messages(FIRST_TURN)
    rendered = ChatTemplate(None, "<s>").render(messages, tools=tools)
    head = (
        "<s>Tools:\n<tools>\n" + json.dumps(tools[0]["function"]) + "\n" + json.dumps(tools[1]["function"]) + "\n"
        "</tools>\nTo call tools, answer with one block per call:\n"
        '<tool_call>\n{"name": <name>, "arguments": <arguments object>}\n</tool_call>\n\n'
    )
    assert rendered == head + "Answer briefly.\n\nQuestion: Weather in Paris?\nAnswer:"
    assert ChatTemplate(None, "<s>").render(messages) == "<s>Answer briefly.\n\nQuestion: Weather in Paris?\nAnswer:"


def test_the_default_template_renders_a_call_as_the_model_wrote_it_so_the_next_prompt_extends_the_last() -> None:
    template = ChatTemplate(None, "<s>")
    tools, first = _tools_and_messages(FIRST_TURN)
    _, after = _tools_and_messages(_history(2))
    generated = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>'
    )
    next_prompt = template.render(after, tools=tools)
    assert next_prompt.startswith(template.render(first, tools=tools) + generated)
    assert next_prompt.endswith('Tool result: {"temp": 20}\nTool result: {"temp": 21}\nAnswer:')


def test_the_shipped_model_carries_the_default_template() -> None:
    config = json.loads(
        (Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama" / "tokenizer_config.json").read_text()
    )
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (QWEN_2_5.chat_template, "hermes"),
        (LLAMA_3_3.chat_template, "llama3_json"),
        (MISTRAL.chat_template, "mistral"),
        (DEFAULT_CHAT_TEMPLATE, "hermes"),
        (LLAMA_3.chat_template, "hermes"),  # no tool format of its own: the default's
    ],
    ids=["qwen2.5", "llama3.3", "mistral", "default", "llama3-no-tools"],
)
def test_the_call_format_follows_from_the_template(source: str, expected: str) -> None:
    assert detect_format(source).name == expected
