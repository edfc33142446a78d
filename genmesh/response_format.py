"""ResponseFormat as a domain value: which structure the output must have, checked against the proto's bounds.

Shared by the gateway (which refuses a bad format before any stage runs and passes the message on) and
inference (which compiles it into a token matcher). Field paths are the request's: ``response_format.regex``,
``response_format.json_schema.schema_json``, ... Whether a schema, pattern or grammar is *valid* is decided by
the compiler in inference (``services/inference/constraints``); here only shape and size.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum

from genmesh.errors import InvalidArgument
from genmesh.v1 import common_pb2

MAX_SCHEMA_CHARS = 262_144
MAX_REGEX_CHARS = 16_384
MAX_GRAMMAR_CHARS = 262_144
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1024
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class FormatKind(StrEnum):
    """The kinds of structure; ``lark`` and ``ebnf`` are the two grammar syntaxes."""

    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    REGEX = "regex"
    LARK = "lark"
    EBNF = "ebnf"
    CHOICE = "choice"


FIELDS = {
    FormatKind.JSON_SCHEMA: "response_format.json_schema.schema_json",
    FormatKind.JSON_OBJECT: "response_format.json_object",
    FormatKind.REGEX: "response_format.regex",
    FormatKind.LARK: "response_format.grammar.definition",
    FormatKind.EBNF: "response_format.grammar.definition",
    FormatKind.CHOICE: "response_format.choice.choices",
}
"""The request field that carries each kind's text: the one an invalid definition is reported on."""


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """One structure: ``text`` is the schema JSON, the regex, the grammar, or the choices as a JSON list."""

    kind: FormatKind
    text: str = ""
    name: str = ""

    @property
    def field(self) -> str:
        """The request field an error about ``text`` names."""
        return FIELDS[self.kind]

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the compiled grammar (many requests share a schema)."""
        return (self.kind.value, self.text)


def _bounded(text: str, field: str, limit: int) -> str:
    if not text:
        raise InvalidArgument.field(field, "must not be empty")
    if len(text) > limit:
        raise InvalidArgument.field(field, f"must be at most {limit} characters, got {len(text)}")
    return text


def json_schema_format(name: str, schema_json: str) -> ResponseFormat:
    """A json_schema format; the schema must be a JSON object (its validity as a schema is the compiler's)."""
    if not _NAME.fullmatch(name):
        raise InvalidArgument.field(
            "response_format.json_schema.name", "must be 1..64 characters of a-z, A-Z, 0-9, _ and -"
        )
    field = FIELDS[FormatKind.JSON_SCHEMA]
    _bounded(schema_json, field, MAX_SCHEMA_CHARS)
    try:
        schema = json.loads(schema_json)
    except ValueError as error:
        raise InvalidArgument.field(field, f"is not JSON: {error}") from None
    if not isinstance(schema, dict):
        raise InvalidArgument.field(field, "must be a JSON object (a JSON Schema)")
    return ResponseFormat(FormatKind.JSON_SCHEMA, schema_json, name)


def regex_format(pattern: str) -> ResponseFormat:
    """A regex the whole output matches (Rust regex syntax)."""
    return ResponseFormat(FormatKind.REGEX, _bounded(pattern, FIELDS[FormatKind.REGEX], MAX_REGEX_CHARS))


def grammar_format(syntax: FormatKind, definition: str) -> ResponseFormat:
    """A Lark or EBNF (GBNF) grammar."""
    if syntax not in (FormatKind.LARK, FormatKind.EBNF):
        raise ValueError(f"not a grammar syntax: {syntax}")
    return ResponseFormat(syntax, _bounded(definition, FIELDS[syntax], MAX_GRAMMAR_CHARS))


def choice_format(choices: list[str]) -> ResponseFormat:
    """Exactly one of ``choices``: 1..256 distinct, non-empty strings of at most 1024 characters."""
    field = FIELDS[FormatKind.CHOICE]
    if not 1 <= len(choices) <= MAX_CHOICES:
        raise InvalidArgument.field(field, f"must hold 1..{MAX_CHOICES} strings, got {len(choices)}")
    for i, choice in enumerate(choices):
        if not choice or len(choice) > MAX_CHOICE_CHARS:
            raise InvalidArgument.field(f"{field}[{i}]", f"must be 1..{MAX_CHOICE_CHARS} characters")
    if len(set(choices)) != len(choices):
        raise InvalidArgument.field(field, "must be distinct")
    return ResponseFormat(FormatKind.CHOICE, json.dumps(choices, ensure_ascii=False))


JSON_OBJECT = ResponseFormat(FormatKind.JSON_OBJECT, '{"type": "object"}')
"""Any JSON object."""

_SYNTAX = {
    common_pb2.GRAMMAR_SYNTAX_UNSPECIFIED: FormatKind.LARK,
    common_pb2.GRAMMAR_SYNTAX_LARK: FormatKind.LARK,
    common_pb2.GRAMMAR_SYNTAX_EBNF: FormatKind.EBNF,
}


def response_format_from_proto(message: common_pb2.ResponseFormat) -> ResponseFormat | None:
    """The validated format of ``message``; None when none is set (free text)."""
    which = message.WhichOneof("format")
    if which is None:
        return None
    if which == "json_schema":
        return json_schema_format(message.json_schema.name, message.json_schema.schema_json)
    if which == "json_object":
        return JSON_OBJECT
    if which == "regex":
        return regex_format(message.regex)
    if which == "grammar":
        syntax = _SYNTAX.get(message.grammar.syntax)
        if syntax is None:
            raise InvalidArgument.field("response_format.grammar.syntax", f"unknown syntax {message.grammar.syntax}")
        return grammar_format(syntax, message.grammar.definition)
    return choice_format(list(message.choice.choices))
