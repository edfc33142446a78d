"""The gateway's plan of a request's response_format: passed on as sent when its bounds hold, refused naming the
field (with the other bad fields) before any stage runs otherwise."""

from __future__ import annotations

import pytest

from gateway.request import plan_request
from genmesh.errors import InvalidArgument
from genmesh.v1 import common_pb2, gateway_pb2

SCHEMA = common_pb2.JsonSchemaFormat(name="book", schema_json='{"type": "object"}')


def test_a_format_is_passed_on_as_sent_and_none_when_unset() -> None:
    fmt = common_pb2.ResponseFormat(json_schema=SCHEMA)
    plan = plan_request(gateway_pb2.GatewayRequest(question="q", response_format=fmt), None)
    assert plan.response_format == fmt
    assert plan_request(gateway_pb2.GatewayRequest(question="q"), None).response_format is None


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        (common_pb2.ResponseFormat(json_schema=common_pb2.JsonSchemaFormat(name="b", schema_json="[]")),
         "response_format.json_schema.schema_json"),
        (common_pb2.ResponseFormat(json_schema=common_pb2.JsonSchemaFormat(schema_json="{}")),
         "response_format.json_schema.name"),
        (common_pb2.ResponseFormat(regex=""), "response_format.regex"),
        (common_pb2.ResponseFormat(choice=common_pb2.ChoiceFormat()), "response_format.choice.choices"),
        (common_pb2.ResponseFormat(grammar=common_pb2.Grammar(definition="x" * 262_145)),
         "response_format.grammar.definition"),
    ],
)  # fmt: skip
def test_a_format_out_of_bounds_is_refused_with_the_other_bad_fields(
    fmt: common_pb2.ResponseFormat, field: str
) -> None:
    request = gateway_pb2.GatewayRequest(
        question="q", response_format=fmt, sampling=common_pb2.SamplingParams(temperature=-1)
    )
    with pytest.raises(InvalidArgument) as caught:
        plan_request(request, None)
    assert [v.field for v in caught.value.violations] == ["sampling.temperature", field]
