"""The checks every service makes of a FunctionDeclaration (common.proto), written once.

A name matches ``[A-Za-z0-9_-]{1,64}``; a description has at most MAX_DESCRIPTION_CHARS characters; the
arguments' schema is a JSON object of at most MAX_SCHEMA_CHARS characters, a valid Draft 2020-12 JSON Schema whose
``type`` is ``"object"``: an empty schema is ``{"type": "object"}`` (any object), and a schema without ``type`` gets
``"type": "object"`` added; any other ``type`` (a list too) is refused at ``<field>.type``. The schema check
(jsonschema's, slow: about 1.6 ms per schema) is cached by the schema's text, so a conversation that sends the
same tools on every step pays it once.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from genmesh.errors import FieldViolation, InvalidArgument
from genmesh.response_format import MAX_SCHEMA_CHARS
from genmesh.schema import check_schema
from genmesh.v1 import common_pb2

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "MAX_SCHEMA_CHARS",
    "NAME",
    "arguments_schema",
    "check_declaration",
    "name_violation",
    "schema_verdict",
]

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A tool's (and a call's, and a message's) name."""
MAX_DESCRIPTION_CHARS = 4096
"""A tool's description: at most this many characters."""
SCHEMA_VERDICTS = 256
"""Schema texts whose verdict is kept (each up to MAX_SCHEMA_CHARS characters)."""


def name_violation(name: str, field: str) -> FieldViolation | None:
    """Why ``name`` is not a tool name (at ``field``); None when it is one."""
    return None if NAME.fullmatch(name) else FieldViolation(field, "must match [A-Za-z0-9_-]{1,64}")


def check_declaration(
    declaration: common_pb2.FunctionDeclaration, at: str, bad: list[FieldViolation]
) -> dict[str, Any] | None:
    """The arguments' schema of ``declaration`` (at ``at``, e.g. ``tools[2]``), or None after adding what is wrong
    with it (name, description, schema) to ``bad``."""
    before = len(bad)
    if (violation := name_violation(declaration.name, f"{at}.name")) is not None:
        bad.append(violation)
    if len(declaration.description) > MAX_DESCRIPTION_CHARS:
        bad.append(FieldViolation(f"{at}.description", f"at most {MAX_DESCRIPTION_CHARS} characters"))
    schema = arguments_schema(declaration.parameters_json_schema, f"{at}.parameters_json_schema", bad)
    return schema if len(bad) == before else None


def arguments_schema(text: str, field: str, bad: list[FieldViolation]) -> dict[str, Any] | None:
    """The arguments' JSON Schema ``text`` parsed (``"type": "object"`` added when it has none), or None after adding
    why it is not one to ``bad``."""
    verdict = schema_verdict(text)
    if verdict is not None:
        suffix, description = verdict
        bad.append(FieldViolation(field + suffix, description))
        return None
    return _with_type(json.loads(text)) if text.strip() else {"type": "object"}


@lru_cache(maxsize=SCHEMA_VERDICTS)
def schema_verdict(text: str) -> tuple[str, str] | None:
    """What is wrong with the arguments' schema ``text``, as (field suffix, description); None when it is fine."""
    if len(text) > MAX_SCHEMA_CHARS:
        return "", f"at most {MAX_SCHEMA_CHARS} characters, got {len(text)}"
    if not text.strip():
        return None
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError) as error:
        return "", f"is not valid JSON: {str(error)[:160]}"
    if not isinstance(schema, dict):
        return "", "must be a JSON object (a JSON Schema)"
    try:
        check_schema(_with_type(schema), "")
    except InvalidArgument as error:
        violation = error.violations[0]
        return violation.field, violation.description
    except RecursionError:
        return "", "is nested too deeply"
    return None


def _with_type(schema: dict[str, Any]) -> dict[str, Any]:
    return schema if "type" in schema else {"type": "object", **schema}
