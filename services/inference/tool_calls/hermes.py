"""Hermes / Qwen2.5 calls: ``<tool_call>\\n{"name": "...", "arguments": {...}}\\n</tool_call>``, anywhere in the text.

Text outside the blocks is sent as text, except whitespace after a call (the separator between calls and the
blank end of the turn), which is dropped unless more text follows it.
"""

from __future__ import annotations

from services.inference.tool_calls.base import Event, call_from_text, held_suffix, unreadable

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class HermesParser:
    """Streams text around ``<tool_call>…</tool_call>`` blocks; each block is one call."""

    def __init__(self) -> None:
        self._buffer = ""
        self._inside = False
        self._called = False

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        events: list[Event] = []
        while True:
            if self._inside:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    return events
                events.append(call_from_text(self._buffer[:end]))
                self._buffer = self._buffer[end + len(CLOSE) :]
                self._inside, self._called = False, True
                continue
            start = self._buffer.find(OPEN)
            if start >= 0:
                self._text(self._buffer[:start], events)
                self._buffer = self._buffer[start + len(OPEN) :]
                self._inside = True
                continue
            keep = held_suffix(self._buffer, OPEN)
            sendable = self._buffer[: len(self._buffer) - keep]
            if self._called and not sendable.strip():
                return events  # whitespace after a call: held until text or another call decides
            self._text(sendable, events)
            self._buffer = self._buffer[len(sendable) :]
            return events

    def _text(self, text: str, events: list[Event]) -> None:
        """Send ``text``, unless it is only the whitespace between or after calls."""
        if text and (text.strip() or not self._called):
            events.append(text)

    def finish(self) -> list[Event]:
        rest, self._buffer = self._buffer, ""
        if self._inside:
            self._inside = False
            return [unreadable(rest)]
        if self._called and not rest.strip():
            return []
        return [rest] if rest else []
