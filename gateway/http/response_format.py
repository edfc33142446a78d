"""The OpenAI ``response_format`` body field as a ResponseFormat message.

OpenAI's ``{"type": "text"}`` (free text), ``{"type": "json_object"}`` and ``{"type": "json_schema", "json_schema":
{"name", "description", "schema", "strict"}}``, and genmesh's own ``{"type": "regex", "regex": ...}``, ``{"type":
"choice", "choices": [...]}`` and ``{"type": "grammar", "grammar": {"syntax": "lark" | "ebnf", "definition": ...}}``.
Shapes and types are checked here (400 naming the field); bounds by the gateway and the grammar itself by
inference, whose field paths ``NAMES`` turns back into this body's.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.http.errors import bad_field
from genmesh.v1 import common_pb2

FIELD = "response_format"
NAMES = {
    "response_format.json_schema.schema_json": "response_format.json_schema.schema",
    "response_format.choice.choices": "response_format.choices",
}
"""ResponseFormat field paths -> this body's names (for errors.openai_name)."""
_SYNTAXES = {"lark": common_pb2.GRAMMAR_SYNTAX_LARK, "ebnf": common_pb2.GRAMMAR_SYNTAX_EBNF}
_KINDS = {dict: "an object", str: "a string", bool: "a boolean", list: "an array"}
_KEYS = {
    "text": {"type"},
    "json_object": {"type"},
    "json_schema": {"type", "json_schema"},
    "regex": {"type", "regex"},
    "choice": {"type", "choices"},
    "grammar": {"type", "grammar"},
}


def _only(value: dict[str, Any], keys: set[str], at: str) -> None:
    for key in value:
        if key not in keys:
            raise bad_field(f"{at}.{key}", "not supported by genmesh", "unsupported_parameter")


def _get(value: dict[str, Any], key: str, kind: type, at: str, required: bool = True) -> Any:
    found = value.get(key)
    if found is None:
        if required:
            raise bad_field(f"{at}.{key}", "is required", "missing_required_parameter")
        return None
    if not isinstance(found, kind) or (kind is not bool and isinstance(found, bool)):
        raise bad_field(f"{at}.{key}", f"must be {_KINDS[kind]}", "invalid_type")
    return found


def parse_response_format(value: Any) -> common_pb2.ResponseFormat | None:
    """The ResponseFormat of a body's ``response_format`` (None: absent or text); HttpError 400 naming the field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_field(FIELD, "must be an object", "invalid_type")
    kind = _get(value, "type", str, FIELD)
    if kind not in _KEYS:
        raise bad_field(f"{FIELD}.type", f"must be one of {', '.join(_KEYS)}")
    _only(value, _KEYS[kind], FIELD)
    if kind == "text":
        return None
    if kind == "json_object":
        return common_pb2.ResponseFormat(json_object=common_pb2.JsonObjectFormat())
    if kind == "regex":
        return common_pb2.ResponseFormat(regex=_get(value, "regex", str, FIELD))
    if kind == "choice":
        choices = _get(value, "choices", list, FIELD)
        for i, choice in enumerate(choices):
            if not isinstance(choice, str):
                raise bad_field(f"{FIELD}.choices[{i}]", "must be a string", "invalid_type")
        return common_pb2.ResponseFormat(choice=common_pb2.ChoiceFormat(choices=choices))
    if kind == "grammar":
        at = f"{FIELD}.grammar"
        grammar = _get(value, "grammar", dict, FIELD)
        _only(grammar, {"syntax", "definition"}, at)
        syntax = _get(grammar, "syntax", str, at, required=False) or "lark"
        if syntax not in _SYNTAXES:
            raise bad_field(f"{at}.syntax", "must be lark or ebnf")
        definition = _get(grammar, "definition", str, at)
        return common_pb2.ResponseFormat(grammar=common_pb2.Grammar(syntax=_SYNTAXES[syntax], definition=definition))
    at = f"{FIELD}.json_schema"
    spec = _get(value, "json_schema", dict, FIELD)
    _only(spec, {"name", "description", "schema", "strict"}, at)
    schema = _get(spec, "schema", dict, at)
    return common_pb2.ResponseFormat(
        json_schema=common_pb2.JsonSchemaFormat(
            name=_get(spec, "name", str, at),
            description=_get(spec, "description", str, at, required=False) or "",
            schema_json=json.dumps(schema, ensure_ascii=False),
            strict=bool(_get(spec, "strict", bool, at, required=False)),
        )
    )
