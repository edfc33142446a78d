"""response_format end to end: a gateway served in-process over the real inference service (the shipped model),
called over gRPC and through the HTTP front with the official ``openai`` package. A json_schema answer validates;
a bad schema, regex or bound is INVALID_ARGUMENT / 400 naming the field. Also the body mapping, without a network."""

from __future__ import annotations

import json
from typing import Any

import grpc
import jsonschema
import openai
import pytest
from support.model_mesh import ModelMesh

from gateway.http.errors import HttpError
from gateway.http.openai_chat import parse_request
from genmesh.status import field_violations
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from http_front.front import Front

WORD = {"type": "string", "maxLength": 10}
SCHEMA = {
    "type": "object",
    "properties": {"title": WORD, "year": {"type": "integer", "minimum": 1900, "maximum": 2100}, "tags": {
        "type": "array", "items": WORD, "maxItems": 2}},
    "required": ["title", "year", "tags"],
    "additionalProperties": False,
}  # fmt: skip
NO_RETRIEVAL = {"genmesh": {"retrieval": {"disabled": True}}}
USER: Any = [{"role": "user", "content": "Describe a book as JSON."}]


def ask(fmt: common_pb2.ResponseFormat, temperature: float = 0.0) -> gateway_pb2.GatewayRequest:
    return gateway_pb2.GatewayRequest(
        question="Describe a book as JSON.",
        retrieval=gateway_pb2.RetrievalOptions(disabled=True),
        sampling=common_pb2.SamplingParams(max_tokens=200, temperature=temperature, seed=3),
        response_format=fmt,
    )


async def answer(channel: grpc.aio.Channel, request: gateway_pb2.GatewayRequest) -> tuple[str, int]:
    text, reason = "", 0
    async for event in gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=60):
        if event.HasField("delta"):
            text += event.delta.text
        elif event.HasField("complete"):
            reason = event.complete.finish_reason
    return text, reason


async def test_a_json_schema_answer_over_grpc_validates(model_front: tuple[ModelMesh, grpc.aio.Channel, Front]) -> None:
    fmt = common_pb2.ResponseFormat(
        json_schema=common_pb2.JsonSchemaFormat(name="book", schema_json=json.dumps(SCHEMA))
    )
    for temperature in (0.0, 1.0):
        text, reason = await answer(model_front[1], ask(fmt, temperature))
        assert reason == common_pb2.FINISH_REASON_STOP, text
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        (common_pb2.ResponseFormat(json_schema=common_pb2.JsonSchemaFormat(name="b", schema_json='{"type": 7}')),
         "response_format.json_schema.schema_json"),
        (common_pb2.ResponseFormat(regex="(["), "response_format.regex"),
        (common_pb2.ResponseFormat(choice=common_pb2.ChoiceFormat(choices=["a", "a"])),
         "response_format.choice.choices"),
        (common_pb2.ResponseFormat(grammar=common_pb2.Grammar(definition="start: nowhere")),
         "response_format.grammar.definition"),
    ],
)  # fmt: skip
async def test_a_bad_format_over_grpc_is_invalid_argument_naming_the_field(
    model_front: tuple[ModelMesh, grpc.aio.Channel, Front], fmt: common_pb2.ResponseFormat, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answer(model_front[1], ask(fmt))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert [v.field for v in field_violations(caught.value)] == [field]


async def test_a_json_schema_answer_over_http_validates(model_client: openai.AsyncOpenAI) -> None:
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "book", "schema": SCHEMA, "strict": True}}
    whole = await model_client.chat.completions.create(
        model="genmesh-test", messages=USER, max_tokens=200, temperature=0, response_format=response_format,
        extra_body=NO_RETRIEVAL,
    )  # fmt: skip
    assert whole.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(whole.choices[0].message.content or ""), SCHEMA)
    stream: Any = await model_client.chat.completions.create(
        model="genmesh-test", messages=USER, max_tokens=200, temperature=0, response_format=response_format,
        extra_body=NO_RETRIEVAL, stream=True,
    )  # fmt: skip
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert json.loads(text) == json.loads(whole.choices[0].message.content or "")
    regex = await model_client.completions.create(
        model="genmesh-test", prompt="Today is", max_tokens=20, extra_body={"response_format": {
            "type": "regex", "regex": r"\d{4}-\d{2}-\d{2}"}, **NO_RETRIEVAL},
    )  # fmt: skip
    assert len(regex.choices[0].text) == 10 and regex.choices[0].text[4] == "-"


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema", "json_schema": {"name": "b", "schema": {"type": "nope"}}},
         "response_format.json_schema.schema"),
        ({"type": "choice", "choices": []}, "response_format.choices"),
        ({"type": "grammar", "grammar": {"syntax": "ebnf", "definition": "root ::= ("}},
         "response_format.grammar.definition"),
        ({"type": "yaml"}, "response_format.type"),
    ],
)  # fmt: skip
async def test_a_bad_format_over_http_is_a_400_naming_the_field(
    model_client: openai.AsyncOpenAI, response_format: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await model_client.chat.completions.create(
            model="genmesh-test", messages=USER, max_tokens=5, extra_body={"response_format": response_format,
                                                                            **NO_RETRIEVAL},
        )  # fmt: skip
    assert caught.value.param == param, caught.value


def test_the_body_field_maps_to_the_response_format() -> None:
    def parsed(value: Any) -> gateway_pb2.GatewayRequest:
        return parse_request({"prompt": "q", "response_format": value}, chat=False, served_model="m").request

    assert not parsed({"type": "text"}).HasField("response_format")
    assert parsed({"type": "json_object"}).response_format.HasField("json_object")
    schema = parsed({"type": "json_schema", "json_schema": {"name": "n", "description": "d", "schema": {"a": "é"}}})
    assert (schema.response_format.json_schema.name, json.loads(schema.response_format.json_schema.schema_json)) == (
        "n", {"a": "é"})  # fmt: skip
    grammar = parsed({"type": "grammar", "grammar": {"syntax": "ebnf", "definition": "root ::= 'a'"}}).response_format
    assert grammar.grammar.syntax == common_pb2.GRAMMAR_SYNTAX_EBNF and grammar.grammar.definition == "root ::= 'a'"
    assert parsed({"type": "grammar", "grammar": {"definition": "x"}}).response_format.grammar.syntax == (
        common_pb2.GRAMMAR_SYNTAX_LARK)  # fmt: skip
    assert list(parsed({"type": "choice", "choices": ["a", "b"]}).response_format.choice.choices) == ["a", "b"]
    assert parsed({"type": "regex", "regex": "a+"}).response_format.regex == "a+"


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("json", "response_format"),
        ({}, "response_format.type"),
        ({"type": "json_object", "schema": {}}, "response_format.schema"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "n"}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "n", "schema": "{}"}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "n", "schema": {}, "x": 1}}, "response_format.json_schema.x"),
        ({"type": "regex", "regex": 5}, "response_format.regex"),
        ({"type": "choice", "choices": ["a", 1]}, "response_format.choices[1]"),
        ({"type": "grammar", "grammar": {"syntax": "peg", "definition": "x"}}, "response_format.grammar.syntax"),
    ],
)
def test_a_malformed_body_field_is_a_400_naming_it(value: Any, param: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_request({"messages": USER, "response_format": value}, chat=True, served_model="m")
    assert caught.value.status == 400 and caught.value.param == param
