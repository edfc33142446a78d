"""Tool calls through the real inference server (in-process bootstrap, the shipped model, its default template):
with REQUIRED or a named tool the tiny model's calls parse and satisfy their schemas (bounded ones: its context of 512
holds the prompt with two tools and up to four calls, ``--max-tool-calls 4``), also with keywords llguidance does not
implement (compiled leniently, never refused), named and allowed tools
are the only ones called, parallel_tool_calls=false gives one call, AUTO gives text or valid calls, NONE gives no
calls; bad tools are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jsonschema
import pytest
from support.served import served

from genmesh.status import field_violations
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.engine import EngineConfig
from services.inference.server import DEFAULT_MODEL, InferenceService, max_tool_calls_flag

CALCULATOR = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "op": {"enum": ["+", "-", "*", "/"]},
    },
    "required": ["a", "b", "op"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "celsius": {"type": "boolean"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}
LOOKUP = {  # a schema with $defs: each tool's schema is its own root in the grammar
    "type": "object",
    "properties": {"key": {"$ref": "#/$defs/key"}},
    "required": ["key"],
    "additionalProperties": False,
    "$defs": {"key": {"type": "string", "pattern": "^[a-z]{1,8}$"}},
}
UNIMPLEMENTED = {  # MCP tools' keywords llguidance refuses unless lenient; bounded so that a valid call satisfies them
    "type": "object",
    "properties": {
        "tags": {
            "type": "array",
            "items": {"enum": ["a"]},
            "minItems": 1,
            "maxItems": 1,
            "uniqueItems": True,
            "contains": {"const": "a"},
        },
        "mode": {"enum": ["x"]},
    },
    "required": ["tags", "mode"],
    "additionalProperties": False,
    "if": {"properties": {"mode": {"const": "x"}}},
    "then": {"required": ["tags"]},
    "dependentRequired": {"mode": ["tags"]},
}
SCHEMAS = {"calc": CALCULATOR, "weather": WEATHER, "lookup": LOOKUP, "tag": UNIMPLEMENTED}
REQUIRED = common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED)
SEEDS = range(6)


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    config = EngineConfig(max_running=8, max_waiting=16)
    service = InferenceService(DEFAULT_MODEL, "cpu", config, threads=1, max_tool_calls=4)
    async with served(service, metrics=False) as where, grpc.aio.insecure_channel(where.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def declaration(name: str, schema: Any = None) -> common_pb2.FunctionDeclaration:
    text = json.dumps(SCHEMAS[name] if schema is None else schema)
    return common_pb2.FunctionDeclaration(name=name, description=f"The {name} tool.", parameters_json_schema=text)


def request(
    tools: list[str], choice: common_pb2.ToolChoice | None = None, seed: int = 0, **fields: Any
) -> inference_pb2.GenerateRequest:
    question = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(text="What is 2+3?")])
    return inference_pb2.GenerateRequest(
        messages=[question],
        sampling=common_pb2.SamplingParams(max_tokens=240, seed=seed, temperature=1.0),
        tools=[declaration(name) for name in tools],
        tool_choice=choice,
        **fields,
    )


async def generate(stub: inference_pb2_grpc.InferenceServiceStub, sent: inference_pb2.GenerateRequest) -> Any:
    """The text, the calls and the Completion of one generation."""
    responses = [r async for r in stub.Generate(sent, timeout=120)]
    text = "".join(r.delta.text for r in responses if r.HasField("delta"))
    calls = [r.tool_call for r in responses if r.HasField("tool_call")]
    assert responses[-1].HasField("complete")
    return text, calls, responses[-1].complete


def assert_valid(calls: list[common_pb2.ToolCall], names: set[str]) -> None:
    for call in calls:
        assert call.name in names and not call.call_id
        jsonschema.validate(json.loads(call.arguments_json), SCHEMAS[call.name])
        assert call.arguments_json == json.dumps(json.loads(call.arguments_json), separators=(",", ":"))


@pytest.mark.parametrize("tools", [["calc"], ["weather", "lookup"]], ids=["one-tool", "two-tools"])
async def test_required_calls_parse_and_validate_on_every_seed(
    stub: inference_pb2_grpc.InferenceServiceStub, tools: list[str]
) -> None:
    for seed in SEEDS:
        text, calls, done = await generate(stub, request(tools, REQUIRED, seed))
        assert text == "" and 1 <= len(calls) <= 4, (seed, text, calls)
        assert_valid(calls, set(tools))
        assert done.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS, seed


async def test_a_schema_with_keywords_llguidance_does_not_implement_is_served(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    for seed in SEEDS[:3]:
        text, calls, done = await generate(stub, request(["tag"], REQUIRED, seed, parallel_tool_calls=False))
        assert text == "" and len(calls) == 1 and done.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
        assert_valid(calls, {"tag"})
    none = request(["tag"], common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_NONE))
    none.sampling.max_tokens = 4
    _, calls, _ = await generate(stub, none)
    assert calls == []


async def test_a_named_tool_is_the_only_one_called_and_parallel_false_calls_once(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    for seed in SEEDS:
        named = common_pb2.ToolChoice(tool_name="weather")
        _, calls, done = await generate(stub, request(["calc", "weather"], named, seed, parallel_tool_calls=False))
        assert [c.name for c in calls] == ["weather"] and done.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
        assert_valid(calls, {"weather"})


async def test_allowed_tool_names_bound_the_calls(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    allowed = common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED, allowed_tool_names=["lookup"])
    for seed in SEEDS:
        _, calls, _ = await generate(stub, request(["calc", "lookup"], allowed, seed))
        assert calls and {c.name for c in calls} == {"lookup"}
        assert_valid(calls, {"lookup"})


async def test_auto_answers_with_text_or_valid_calls_and_none_never_calls(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    none = common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_NONE)
    _, _, bare = await generate(stub, request([], None, 0))
    for seed in SEEDS:
        text, calls, done = await generate(stub, request(["calc"], None, seed))
        assert "<tool_call>" not in text
        assert_valid(calls, {"calc"})
        assert (done.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS) == bool(calls)
        unconstrained = request(["calc"], none, seed)
        unconstrained.sampling.max_tokens = 16
        text, calls, done = await generate(stub, unconstrained)
        assert calls == [] and done.finish_reason != common_pb2.FINISH_REASON_TOOL_CALLS
        assert done.usage.prompt_tokens > bare.usage.prompt_tokens + 100  # NONE still renders the tools


async def test_auto_with_a_response_format_answers_in_that_format_or_calls(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    shape = {
        "type": "object",
        "properties": {"sum": {"type": "integer"}},
        "required": ["sum"],
        "additionalProperties": False,
    }
    fmt = common_pb2.ResponseFormat(json_schema=common_pb2.JsonSchemaFormat(name="sum", schema_json=json.dumps(shape)))
    for seed in SEEDS:
        text, calls, _ = await generate(stub, request(["calc"], None, seed, response_format=fmt))
        assert_valid(calls, {"calc"})
        if not calls:
            jsonschema.validate(json.loads(text), shape)


async def test_samples_are_parsed_each_on_their_own(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    sent = request(["calc"], REQUIRED, 3, parallel_tool_calls=False)
    sent.sampling.n = 3
    responses = [r async for r in stub.Generate(sent, timeout=120)]
    for index in range(3):
        calls = [r.tool_call for r in responses if r.HasField("tool_call") and r.index == index]
        assert len(calls) == 1
        assert_valid(calls, {"calc"})


def bad(tools: list[common_pb2.FunctionDeclaration] | None = None, **fields: Any) -> inference_pb2.GenerateRequest:
    """A good request but for ``tools`` and ``fields`` (messages)."""
    sent = request(["calc", "weather"])
    if tools is not None:
        del sent.tools[:]
        sent.tools.extend(tools)
    for name, value in fields.items():
        getattr(sent, name).CopyFrom(value)
    return sent


BAD = {
    "no-messages": (inference_pb2.GenerateRequest(prompt="Hi", tools=[declaration("calc")]), ["tools"]),
    "bad-name": (bad(tools=[common_pb2.FunctionDeclaration(name="no spaces")]), ["tools[0].name"]),
    "repeated-name": (bad(tools=[declaration("calc"), declaration("calc")]), ["tools[1].name"]),
    "long-description": (
        bad(tools=[common_pb2.FunctionDeclaration(name="f", description="d" * 4097)]),
        ["tools[0].description"],
    ),
    "schema-not-json": (
        bad(tools=[common_pb2.FunctionDeclaration(name="f", parameters_json_schema="{nope")]),
        ["tools[0].parameters_json_schema"],
    ),
    "schema-not-object": (
        bad(tools=[declaration("calc"), declaration("weather", [1])]),
        ["tools[1].parameters_json_schema"],
    ),
    "schema-invalid": (
        bad(tools=[declaration("calc", {"type": "object", "properties": {"a": {"type": "nope"}}})]),
        ["tools[0].parameters_json_schema"],
    ),
    "schema-not-for-an-object": (
        bad(tools=[declaration("calc", {"type": "string"})]),
        ["tools[0].parameters_json_schema.type"],
    ),
    "too-many": (bad(tools=[declaration("calc", {}) for _ in range(129)]), ["tools"]),
    "unknown-named-tool": (bad(tool_choice=common_pb2.ToolChoice(tool_name="nope")), ["tool_choice.tool_name"]),
    "unknown-allowed-tool": (
        bad(tool_choice=common_pb2.ToolChoice(allowed_tool_names=["calc", "nope"])),
        ["tool_choice.allowed_tool_names[1]"],
    ),
    "required-without-tools": (bad(tools=[], tool_choice=REQUIRED), ["tool_choice"]),
    "allowed-without-tools": (
        bad(tools=[], tool_choice=common_pb2.ToolChoice(allowed_tool_names=["calc"])),
        ["tool_choice.allowed_tool_names[0]"],
    ),
    "grammar-with-auto": (
        bad(response_format=common_pb2.ResponseFormat(grammar=common_pb2.Grammar(definition='start: "x"'))),
        ["response_format"],
    ),
    "bad-regex-with-auto": (bad(response_format=common_pb2.ResponseFormat(regex="(")), ["response_format.regex"]),
}


@pytest.mark.parametrize(("sent", "fields"), list(BAD.values()), ids=list(BAD))
async def test_bad_tools_are_invalid_argument_naming_the_field(
    stub: inference_pb2_grpc.InferenceServiceStub, sent: inference_pb2.GenerateRequest, fields: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(stub, sent)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert [v.field for v in field_violations(caught.value)] == fields


@pytest.mark.parametrize("parser", ["llama3_json", "mistral"])
async def test_the_tool_call_parser_flag_sets_the_format_the_calls_are_written_and_read_in(parser: str) -> None:
    config = EngineConfig(max_running=2, max_waiting=4)
    service = InferenceService(DEFAULT_MODEL, "cpu", config, threads=1, tool_call_parser=parser)
    async with served(service, metrics=False) as where, grpc.aio.insecure_channel(where.address) as channel:
        other = inference_pb2_grpc.InferenceServiceStub(channel)
        assert service.tool_format().name == parser
        for seed in range(3):
            text, calls, done = await generate(other, request(["calc"], REQUIRED, seed, parallel_tool_calls=False))
            assert text == "" and len(calls) == 1 and done.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
            assert_valid(calls, {"calc"})


@pytest.mark.parametrize("calls", [0, 65])
def test_max_tool_calls_out_of_its_range_is_refused(calls: int) -> None:
    with pytest.raises(ValueError, match="--max-tool-calls"):
        InferenceService(DEFAULT_MODEL, "cpu", EngineConfig(), threads=1, max_tool_calls=calls)
    with pytest.raises(argparse.ArgumentTypeError):
        max_tool_calls_flag(str(calls))
    assert max_tool_calls_flag("1") == 1 and max_tool_calls_flag("64") == 64
