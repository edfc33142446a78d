"""Mistral calls: ``[TOOL_CALLS]`` then a JSON array of ``{"name": "...", "arguments": {...}}`` objects.

Text before the marker is sent; after it, each array element is a call, sent once the array is read whole (an
array cut off, or not JSON, is one unreadable call). ``[TOOL_CALLS]`` is a special token in Mistral's tokenizers:
the parser sees it only when the detokenizer keeps special tokens in the text.
"""

from __future__ import annotations

import json

from services.inference.tool_calls.base import Event, call_from_object, held_suffix, unreadable

MARKER = "[TOOL_CALLS]"
_decoder = json.JSONDecoder()


class MistralParser:
    """Text, then ``[TOOL_CALLS]`` and one JSON array of calls."""

    def __init__(self) -> None:
        self._buffer = ""
        self._inside = False

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        events: list[Event] = []
        if not self._inside:
            start = self._buffer.find(MARKER)
            if start < 0:
                keep = held_suffix(self._buffer, MARKER)
                sendable = self._buffer[: len(self._buffer) - keep]
                self._buffer = self._buffer[len(sendable) :]
                return [sendable] if sendable else []
            if start:
                events.append(self._buffer[:start])
            self._buffer = self._buffer[start + len(MARKER) :]
            self._inside = True
        rest = self._buffer.lstrip()
        try:
            value, end = _decoder.raw_decode(rest)
        except ValueError:
            return events
        self._buffer = rest[end:]
        self._inside = False
        if isinstance(value, list):
            events.extend(call_from_object(item, json.dumps(item), ("arguments",)) for item in value)
        else:
            events.append(call_from_object(value, rest[:end], ("arguments",)))
        return events + self.feed("")  # text, or another marker, after the array

    def finish(self) -> list[Event]:
        rest, self._buffer = self._buffer, ""
        if self._inside:
            self._inside = False
            return [unreadable(rest)] if rest.strip() else [unreadable("")]
        return [rest] if rest else []
