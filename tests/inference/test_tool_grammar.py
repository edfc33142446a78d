"""The tool-call grammar of each format, checked with llguidance on the shipped model's tokenizer: it accepts the
calls the format's parser reads (and only calls of the callable tools with valid arguments, at most max_calls
(``--max-tool-calls``), one without parallel_tool_calls); a schema with keywords llguidance does not implement is
compiled leniently; AUTO's text branch takes text but never a call marker, or the response_format's shape."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from tokenizers import Tokenizer

from genmesh.errors import InvalidArgument
from genmesh.function_declarations import schema_verdict
from genmesh.response_format import FormatKind, ResponseFormat, grammar_format, json_schema_format, regex_format
from genmesh.v1 import common_pb2, inference_pb2
from inference.conftest import MODEL_DIR
from services.inference.constraints import GrammarCompiler
from services.inference.constraints.tool_grammar import DEFAULT_MAX_CALLS, tool_grammar
from services.inference.tool_calls import FORMATS, ParsedCall, ToolFormat
from services.inference.tool_calls.request import ToolRequest, tool_request_from_proto

ADD = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
NOTE = {
    "type": "object",
    "properties": {"text": {"$ref": "#/$defs/short"}},
    "required": ["text"],
    "additionalProperties": False,
    "$defs": {"short": {"type": "string", "maxLength": 5}},
}

Calls = list[tuple[str, dict[str, Any]]]
"""Calls as (name, arguments)."""


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|eos|>")
    assert eos is not None
    return GrammarCompiler(tokenizer, [eos])


def tools(
    choice: common_pb2.ToolChoice | None = None, parallel: bool | None = None, schemas: dict[str, Any] | None = None
) -> ToolRequest:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(text="q")])
    request = inference_pb2.GenerateRequest(
        messages=[message],
        tools=[
            common_pb2.FunctionDeclaration(name=name, parameters_json_schema=json.dumps(schema))
            for name, schema in (schemas or {"add": ADD, "note": NOTE}).items()
        ],
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )
    parsed = tool_request_from_proto(request)
    assert parsed is not None
    return parsed


def written(fmt: ToolFormat, calls: Calls) -> str:
    """``calls`` as the format writes them (the grammar's separators: ", " and ": ")."""
    one = [f'{fmt.open}{{"name": "{n}", "{fmt.arguments_key}": {json.dumps(a)}}}{fmt.close}' for n, a in calls]
    return fmt.prefix + fmt.separator.join(one) + fmt.suffix


def accepts(compiler: GrammarCompiler, fmt: ResponseFormat | None, text: str) -> bool:
    """Whether the whole of ``text`` is an output ``fmt`` allows (ending there)."""
    constraint = compiler.constraint(fmt)
    assert constraint is not None
    matcher = constraint.matcher
    ok = matcher.consume_tokens(compiler.tokenizer.tokenize_str(text))
    return bool(ok) and matcher.is_accepting()


REQUIRED = common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED)
GOOD: Calls = [("add", {"a": 2}), ("note", {"text": "hi"})]


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_required_accepts_what_the_parser_reads_and_nothing_else(compiler: GrammarCompiler, fmt: ToolFormat) -> None:
    grammar = tool_grammar(tools(REQUIRED), fmt, None)
    calls: Calls
    for calls in ([GOOD[0]], GOOD, GOOD * 4):
        text = written(fmt, calls)
        assert accepts(compiler, grammar, text), text
        parser = fmt.new_parser()
        events = parser.feed(text) + parser.finish()
        assert events == [ParsedCall(n, json.dumps(a, separators=(",", ":"))) for n, a in calls]
    for calls in (
        [("add", {"a": "2"})],  # not an integer
        [("note", {"text": "far too long"})],  # past the $ref'd maxLength
        [("sub", {"a": 2})],  # not a tool
        GOOD * 4 + [GOOD[0]],  # more than DEFAULT_MAX_CALLS
        [],
    ):
        assert not accepts(compiler, grammar, written(fmt, calls)), calls
    assert not accepts(compiler, grammar, "The answer is 4.")
    assert len(GOOD * 4) == DEFAULT_MAX_CALLS


@pytest.mark.parametrize("max_calls", [1, 3, 64])
def test_max_tool_calls_bounds_the_calls_of_a_turn(compiler: GrammarCompiler, max_calls: int) -> None:
    fmt = FORMATS["hermes"]
    grammar = tool_grammar(tools(REQUIRED), fmt, None, max_calls)
    assert accepts(compiler, grammar, written(fmt, [GOOD[0]] * max_calls))
    assert not accepts(compiler, grammar, written(fmt, [GOOD[0]] * (max_calls + 1)))
    auto = tool_grammar(tools(), fmt, None, max_calls)
    assert accepts(compiler, auto, written(fmt, [GOOD[1]] * max_calls))
    assert not accepts(compiler, auto, written(fmt, [GOOD[1]] * (max_calls + 1)))


UNIMPLEMENTED = {  # keywords llguidance refuses as "Unimplemented keys" unless lenient (common in MCP tools)
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True, "contains": {"const": "a"}},
        "mode": {"enum": ["x", "y"]},
    },
    "required": ["mode"],
    "additionalProperties": False,
    "if": {"properties": {"mode": {"const": "x"}}},
    "then": {"required": ["tags"]},
    "dependentRequired": {"tags": ["mode"]},
}


def test_a_schema_with_keywords_llguidance_does_not_implement_is_compiled_leniently(
    compiler: GrammarCompiler,
) -> None:
    fmt = FORMATS["hermes"]
    grammar = tool_grammar(tools(REQUIRED, schemas={"tag": UNIMPLEMENTED}), fmt, None)
    assert accepts(compiler, grammar, written(fmt, [("tag", {"tags": ["a"], "mode": "x"})]))
    assert not accepts(compiler, grammar, written(fmt, [("tag", {"mode": "z"})]))  # what it can enforce, it does


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_named_and_not_parallel_allow_one_call_of_that_tool(compiler: GrammarCompiler, fmt: ToolFormat) -> None:
    grammar = tool_grammar(tools(common_pb2.ToolChoice(tool_name="note"), parallel=False), fmt, None)
    assert accepts(compiler, grammar, written(fmt, [GOOD[1]]))
    assert not accepts(compiler, grammar, written(fmt, [GOOD[0]]))
    assert not accepts(compiler, grammar, written(fmt, [GOOD[1], GOOD[1]]))


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_auto_allows_text_or_calls_but_no_text_the_parser_would_read_as_a_call(
    compiler: GrammarCompiler, fmt: ToolFormat
) -> None:
    grammar = tool_grammar(tools(), fmt, None)
    assert accepts(compiler, grammar, written(fmt, GOOD))
    assert accepts(compiler, grammar, "It is 4, as 2 + 2 = 4.")
    assert not accepts(compiler, grammar, f"Let me see. {fmt.marker} nope" if fmt.marker_anywhere else "{nope")


def test_auto_text_takes_the_response_formats_shape(compiler: GrammarCompiler) -> None:
    fmt = FORMATS["hermes"]
    shaped = json_schema_format("sum", json.dumps({"type": "object", "properties": {"sum": {"type": "integer"}}}))
    grammar = tool_grammar(tools(), fmt, shaped)
    assert accepts(compiler, grammar, '{"sum": 4}') and accepts(compiler, grammar, written(fmt, GOOD))
    assert not accepts(compiler, grammar, "four")
    digits = tool_grammar(tools(), fmt, regex_format("[0-9]+"))
    assert accepts(compiler, digits, "42") and not accepts(compiler, digits, "4a")
    with pytest.raises(InvalidArgument) as raised:
        tool_grammar(tools(), fmt, grammar_format(FormatKind.LARK, 'start: "x"'))
    assert [v.field for v in raised.value.violations] == ["response_format"]


def test_none_and_required_leave_or_replace_the_response_format() -> None:
    shaped = regex_format("[0-9]+")
    fmt = FORMATS["hermes"]
    assert tool_grammar(tools(common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_NONE)), fmt, shaped) is shaped
    required = tool_grammar(tools(REQUIRED), fmt, shaped)
    assert required is not None and required.kind is FormatKind.LARK and "[0-9]" not in required.text


def test_the_same_tools_on_every_step_are_checked_once() -> None:
    """Every loop step sends the same tools: the jsonschema check (ms per schema) runs on the first only."""
    unique = {**ADD, "description": uuid.uuid4().hex}
    before = schema_verdict.cache_info()
    for _ in range(3):
        tools(REQUIRED, schemas={"add": unique})
    after = schema_verdict.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)
