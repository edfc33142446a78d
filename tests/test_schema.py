"""Tests for genmesh.schema: argument parsing and JSON-Schema validation reported as field violations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from genmesh.errors import InvalidArgument
from genmesh.schema import MAX_ARGUMENTS_BYTES, MAX_VIOLATIONS, check_schema, field_path, validate_arguments

PREFIX = "tool_calls[0].arguments"


def _schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "expression": {"type": "string", "minLength": 1, "maxLength": 10},
            "count": {"type": "integer", "minimum": 0},
            "mode": {"enum": ["fast", "exact"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "nested": {
                "type": "object",
                "properties": {"level": {"type": "integer"}},
                "required": ["level"],
                "additionalProperties": False,
            },
            "odd key": {"type": "string"},
        },
        "required": ["expression"],
        "additionalProperties": False,
    }


def _violations(arguments: str, schema: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        validate_arguments(schema or _schema(), arguments, PREFIX)
    return [(violation.field, violation.description) for violation in caught.value.violations]


def test_valid_arguments_are_returned_parsed() -> None:
    arguments = {"expression": "1+1", "count": 3, "tags": ["a"], "nested": {"level": 2}}
    assert validate_arguments(_schema(), json.dumps(arguments), PREFIX) == arguments


def test_blank_arguments_mean_an_empty_object() -> None:
    assert validate_arguments({"type": "object"}, "", PREFIX) == {}
    assert validate_arguments({"type": "object"}, "  \n", PREFIX) == {}
    assert _violations("") == [(f"{PREFIX}.expression", "is required")]


def test_all_errors_are_collected_with_paths() -> None:
    arguments = {
        "expression": 5,
        "count": -1,
        "mode": "slow",
        "tags": ["ok", 7],
        "nested": {"extra": True},
        "odd key": 1,
        "unknown": None,
    }
    fields = [field for field, _ in _violations(json.dumps(arguments))]
    assert sorted(fields) == sorted(
        [
            f"{PREFIX}.expression",
            f"{PREFIX}.count",
            f"{PREFIX}.mode",
            f"{PREFIX}.tags[1]",
            f"{PREFIX}.nested.level",
            f"{PREFIX}.nested.extra",
            f'{PREFIX}["odd key"]',
            f"{PREFIX}.unknown",
        ]
    )


def test_descriptions_are_short_and_specific() -> None:
    described = dict(_violations(json.dumps({"expression": "x" * 5000, "count": 1.5, "unknown": 1})))
    assert described[f"{PREFIX}.expression"] == "must be at most 10 characters long"
    assert described[f"{PREFIX}.count"] == "must be of type integer, got number"
    assert described[f"{PREFIX}.unknown"] == "is not an allowed property"


def test_missing_required_property_is_named() -> None:
    schema = {"type": "object", "properties": {}, "required": ["a", "b"]}
    assert _violations('{"a": 1}', schema) == [(f"{PREFIX}.b", "is required")]


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ("{not json", "is not valid JSON"),
        ('{"expression": NaN}', "NaN is not a JSON number"),
        ('{"expression": Infinity}', "Infinity is not a JSON number"),
        ("[1, 2]", "must be a JSON object, got array"),
        ('"text"', "must be a JSON object, got string"),
        ("null", "must be a JSON object, got null"),
        ("[" * 100_000, f"at most {MAX_ARGUMENTS_BYTES} bytes"),
        ("[" * 20_000 + "]" * 20_000, "nested too deeply"),
        (json.dumps({"expression": "é" * (MAX_ARGUMENTS_BYTES // 2)}), "bytes"),
    ],
)
def test_unparseable_arguments_name_the_prefix(arguments: str, needle: str) -> None:
    [(field, description)] = _violations(arguments)
    assert field == PREFIX
    assert needle in description


def test_violations_are_capped() -> None:
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    violations = _violations(json.dumps({f"k{i}": i for i in range(100)}), schema)
    assert len(violations) == MAX_VIOLATIONS + 1
    assert violations[-1] == (PREFIX, f"{100 - MAX_VIOLATIONS} more violations were left out")


def test_check_schema() -> None:
    check_schema(_schema())
    with pytest.raises(InvalidArgument) as caught:
        check_schema({"type": "object", "properties": {"a": {"type": 12}}}, field="tools[1].parameters")
    assert caught.value.violations[0].field == "tools[1].parameters"
    with pytest.raises(InvalidArgument) as caught:
        check_schema({"type": "string"})
    assert caught.value.violations[0].field == "parameters.type"
    with pytest.raises(InvalidArgument):
        check_schema([])  # type: ignore[arg-type]


def test_field_path_formatting() -> None:
    assert field_path("p", ["a", 0, "b-c", "with space", "1"]) == 'p.a[0].b-c["with space"]["1"]'
