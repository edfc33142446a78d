"""JSON-Schema checks for tool arguments: parse a JSON object and report every violation by field path."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from genmesh.errors import FieldViolation, InvalidArgument

MAX_ARGUMENTS_BYTES = 64 * 1024
"""Largest arguments document accepted, in UTF-8 bytes."""
MAX_VIOLATIONS = 32
"""At most this many violations are reported; one more entry says how many were left out."""
MAX_DESCRIPTION_CHARS = 200
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def check_schema(schema: Mapping[str, Any], field: str = "parameters") -> None:
    """Check at registration time that ``schema`` is a valid Draft 2020-12 schema for an arguments object.

    The top level must declare ``"type": "object"`` (the OpenAI function-calling shape). Raises
    InvalidArgument on ``field`` so that a schema sent by a client is reported like any bad field.
    """
    if not isinstance(schema, Mapping):
        raise InvalidArgument.field(field, "must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "".join(f"[{part!r}]" for part in error.absolute_path)
        raise InvalidArgument.field(field, _clip(f"is not a valid JSON Schema{where}: {error.message}")) from None
    if schema.get("type") != "object":
        raise InvalidArgument.field(f"{field}.type", 'must be "object": tool arguments are a JSON object')


def validate_arguments(schema: Mapping[str, Any], arguments_json: str, field_prefix: str) -> dict[str, Any]:
    """Parse ``arguments_json`` and validate it against ``schema``; return the parsed object.

    An empty or blank string means "no arguments" (``{}``). Every violation is reported at once, as
    ``{field_prefix}.{path}`` (``tool_calls[0].arguments.expression``): a missing required property and an
    unexpected additional property are named in the path. Malformed JSON, a non-object, non-finite numbers
    or more than MAX_ARGUMENTS_BYTES raise InvalidArgument on ``field_prefix`` itself.
    """
    parsed = parse_object(arguments_json, field_prefix)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    try:
        violations = _violations(validator.iter_errors(parsed), field_prefix)
    except RecursionError:
        raise InvalidArgument.field(field_prefix, "is nested too deeply") from None
    if violations:
        raise InvalidArgument(violations)
    return parsed


def parse_object(arguments_json: str, field: str) -> dict[str, Any]:
    """``arguments_json`` parsed: a JSON object of at most MAX_ARGUMENTS_BYTES, finite numbers only ("" or blank:
    ``{}``); else InvalidArgument on ``field`` (malformed, nested too deeply, not an object, too large)."""
    if not isinstance(arguments_json, str):
        raise InvalidArgument.field(field, "must be a JSON string")
    if (
        len(arguments_json) > MAX_ARGUMENTS_BYTES
        or len(arguments_json.encode("utf-8", "replace")) > MAX_ARGUMENTS_BYTES
    ):
        raise InvalidArgument.field(field, f"must be at most {MAX_ARGUMENTS_BYTES} bytes of JSON")
    if not arguments_json.strip():
        return {}
    try:
        parsed = json.loads(arguments_json, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidArgument.field(
            field, f"is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    except ValueError as error:
        raise InvalidArgument.field(field, f"is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidArgument.field(field, "is not valid JSON: nested too deeply") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument.field(field, f"must be a JSON object, got {_json_type(parsed)}")
    return parsed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[: MAX_DESCRIPTION_CHARS - 1] + "…"


def field_path(prefix: str, parts: Iterable[str | int]) -> str:
    """Join a JSON path onto ``prefix``: keys as ``.name`` (or ``["odd key"]``), array indices as ``[n]``."""
    path = prefix
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path


def _missing_property(error: ValidationError) -> str | None:
    instance = error.instance if isinstance(error.instance, dict) else {}
    required = error.validator_value if isinstance(error.validator_value, list) else []
    missing = [name for name in required if isinstance(name, str) and name not in instance]
    for name in missing:
        if error.message == f"{name!r} is a required property":
            return name
    return missing[0] if missing else None


def _extra_properties(error: ValidationError) -> list[str]:
    instance = error.instance if isinstance(error.instance, dict) else {}
    declared = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    patterns = error.schema.get("patternProperties", {}) if isinstance(error.schema, dict) else {}
    return [key for key in instance if key not in declared and not any(re.search(pattern, key) for pattern in patterns)]


def _describe(error: ValidationError) -> str:
    """A short description that never echoes a large instance back."""
    kind, value = error.validator, error.validator_value
    if kind == "type":
        expected = " or ".join(value) if isinstance(value, list) else str(value)
        return f"must be of type {expected}, got {_json_type(error.instance)}"
    if kind in ("minLength", "maxLength"):
        bound = "at least" if kind == "minLength" else "at most"
        return f"must be {bound} {value} characters long"
    if kind in ("minItems", "maxItems"):
        bound = "at least" if kind == "minItems" else "at most"
        return f"must have {bound} {value} items"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"must be {relation} {value}"
    if kind == "enum":
        return _clip(f"must be one of {json.dumps(value)}")
    if kind == "const":
        return _clip(f"must equal {json.dumps(value)}")
    if kind == "pattern":
        return _clip(f"must match the pattern {value!r}")
    return _clip(error.message)


def _violations(errors: Iterable[ValidationError], prefix: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    for error in errors:
        path = list(error.absolute_path)
        if error.validator == "required":
            name = _missing_property(error)
            if name is not None:
                found.append(FieldViolation(field_path(prefix, [*path, name]), "is required"))
                continue
        if error.validator in ("additionalProperties", "unevaluatedProperties") and error.validator_value is False:
            extras = _extra_properties(error) if error.validator == "additionalProperties" else []
            if extras:
                found.extend(
                    FieldViolation(field_path(prefix, [*path, extra]), "is not an allowed property") for extra in extras
                )
                continue
        found.append(FieldViolation(field_path(prefix, path), _describe(error)))
    unique = list(dict.fromkeys(found))
    if len(unique) > MAX_VIOLATIONS:
        left_out = len(unique) - MAX_VIOLATIONS
        unique = [*unique[:MAX_VIOLATIONS], FieldViolation(prefix, f"{left_out} more violations were left out")]
    return unique
