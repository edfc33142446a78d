"""What every tool-call parser shares: the call it reads, the streaming protocol, and reading one call's JSON.

A parser sees a sample's text as it streams (``feed``) and at its end (``finish``), and answers with events in
output order: text to send now, and calls read whole. Text that may still turn out to be part of a call (a
partial marker such as ``<tool_`` at a chunk's end) is held until it is decided. A call it cannot read (bad JSON,
no name, cut off by the end of the output) is still a call: the name as far as it could be read ("" when not at
all) and the raw text as its arguments, for the caller to reject; a parser never raises on model output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

_NAME_IN_TEXT = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """One call: ``arguments_json`` is compact JSON text when the call was readable, else the raw text."""

    name: str
    arguments_json: str
    readable: bool = True


Event = str | ParsedCall
"""Text to send, or a call read whole."""


class Parser(Protocol):
    """Reads one sample's tool calls from its streamed text."""

    def feed(self, text: str) -> list[Event]:
        """The events ``text`` (the next piece of output) completes, in order."""
        ...

    def finish(self) -> list[Event]:
        """The events left at the end of the output: held text, and a call cut off (unreadable)."""
        ...


def compact(value: Any) -> str:
    """``value`` as compact JSON text (no spaces, UTF-8 kept); ValueError for a number JSON cannot hold (1e999)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def unreadable(raw: str) -> ParsedCall:
    """A call that could not be read: its name when the text shows one, the raw text as its arguments."""
    found = _NAME_IN_TEXT.search(raw)
    name = ""
    if found is not None:
        try:
            name = json.loads(f'"{found.group(1)}"')
        except ValueError:
            name = found.group(1)
    return ParsedCall(name, raw.strip(), readable=False)


def call_from_object(value: Any, raw: str, arguments_keys: tuple[str, ...] = ("arguments", "parameters")) -> ParsedCall:
    """The call a decoded JSON value describes: an object with a string ``name`` and an object of arguments
    (under the first of ``arguments_keys`` present; a JSON string holding an object is read too; none: ``{}``)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return unreadable(raw)
    key = next((k for k in arguments_keys if k in value), None)
    arguments = {} if key is None else value[key]
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return ParsedCall(value["name"], raw.strip(), readable=False)
    if not isinstance(arguments, dict):
        return ParsedCall(value["name"], raw.strip(), readable=False)
    try:
        return ParsedCall(value["name"], compact(arguments))
    except ValueError:  # a number out of range
        return ParsedCall(value["name"], raw.strip(), readable=False)


def call_from_text(raw: str, arguments_keys: tuple[str, ...] = ("arguments", "parameters")) -> ParsedCall:
    """The call in ``raw``, one JSON object (surrounding whitespace allowed)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return unreadable(raw)
    return call_from_object(value, raw, arguments_keys)


def held_suffix(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` could begin ``marker`` (held until the next text decides)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
