"""The FunctionDeclaration checks every service shares (genmesh.function_declarations): name, description, the
arguments' schema (a ``type`` other than "object" refused, none added), each violation naming its field; the slow
schema check is cached by the schema's text."""

from __future__ import annotations

import json
import uuid

import pytest

from genmesh.errors import FieldViolation
from genmesh.function_declarations import (
    MAX_DESCRIPTION_CHARS,
    MAX_SCHEMA_CHARS,
    arguments_schema,
    check_declaration,
    schema_verdict,
)
from genmesh.v1 import common_pb2

Function = common_pb2.FunctionDeclaration


def checked(function: Function) -> tuple[object, list[str]]:
    bad: list[FieldViolation] = []
    schema = check_declaration(function, "tools[3]", bad)
    return schema, [v.field for v in bad]


def test_a_good_declaration_gives_its_schema_with_type_object() -> None:
    properties = {"city": {"type": "string"}}
    assert checked(Function(name="get_weather-2", description="d" * MAX_DESCRIPTION_CHARS)) == (
        {"type": "object"},
        [],
    )
    untyped = json.dumps({"properties": properties})
    assert checked(Function(name="f", parameters_json_schema=untyped)) == (
        {"type": "object", "properties": properties},
        [],
    )


@pytest.mark.parametrize(
    ("function", "fields"),
    [
        (Function(name="bad name"), ["tools[3].name"]),
        (Function(name="x" * 65), ["tools[3].name"]),
        (Function(name=""), ["tools[3].name"]),
        (Function(name="f", description="d" * (MAX_DESCRIPTION_CHARS + 1)), ["tools[3].description"]),
        (Function(name="f", parameters_json_schema="{"), ["tools[3].parameters_json_schema"]),
        (Function(name="f", parameters_json_schema="[1]"), ["tools[3].parameters_json_schema"]),
        (Function(name="f", parameters_json_schema='{"type": 5}'), ["tools[3].parameters_json_schema"]),
        (Function(name="f", parameters_json_schema='{"type": "string"}'), ["tools[3].parameters_json_schema.type"]),
        (
            Function(name="f", parameters_json_schema='{"type": ["object", "null"]}'),
            ["tools[3].parameters_json_schema.type"],
        ),
        (
            Function(name="f", parameters_json_schema=" " * (MAX_SCHEMA_CHARS + 1)),
            ["tools[3].parameters_json_schema"],
        ),
        (Function(name="no good", description="d" * 5000), ["tools[3].name", "tools[3].description"]),
    ],
)
def test_a_bad_declaration_names_each_bad_field(function: Function, fields: list[str]) -> None:
    assert checked(function) == (None, fields)


def test_the_schema_check_is_cached_by_the_schema_text() -> None:
    text = json.dumps({"type": "object", "properties": {uuid.uuid4().hex: {"type": "integer"}}})
    before = schema_verdict.cache_info()
    for _ in range(3):
        bad: list[FieldViolation] = []
        assert arguments_schema(text, "f", bad) == json.loads(text) and bad == []
    after = schema_verdict.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)
    broken = text.replace('"integer"', '"nope"')
    for _ in range(2):
        bad = []
        assert arguments_schema(broken, "f", bad) is None and [v.field for v in bad] == ["f"]
    assert schema_verdict.cache_info().misses - after.misses == 1
