"""Llama 3.1 / 3.3 JSON calls: the whole output is ``{"name": "...", "parameters": {...}}``, possibly after
``<|python_tag|>``, several separated by ``;`` (as vLLM's llama3_json parser reads them).

The output is a call when its first non-blank text is ``{`` or ``<|python_tag|>``; until that is decided it is
held. An output that begins with ``{`` but is a JSON object with neither ``name`` nor ``parameters``/``arguments``
(say a JSON answer) is text after all, sent whole at the end.
"""

from __future__ import annotations

import json

from services.inference.tool_calls.base import Event, ParsedCall, call_from_object, unreadable

PYTHON_TAG = "<|python_tag|>"
_KEYS = ("parameters", "arguments")
_decoder = json.JSONDecoder()


class Llama3JsonParser:
    """Text, or a run of JSON calls making up the whole output."""

    def __init__(self) -> None:
        self._buffer = ""
        self._mode: str | None = None  # None: undecided; "text"; "calls"
        self._calls: list[ParsedCall] = []

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        if self._mode is None:
            head = self._buffer.lstrip()
            if not head or (len(head) < len(PYTHON_TAG) and PYTHON_TAG.startswith(head)):
                return []  # blank, or maybe the tag: undecided
            if head.startswith(PYTHON_TAG):
                self._mode, self._buffer = "calls", head[len(PYTHON_TAG) :]
            elif head.startswith("{"):
                self._mode, self._buffer = "calls", head
            else:
                self._mode = "text"
        if self._mode == "text":
            out, self._buffer = self._buffer, ""
            return [out] if out else []
        return list(self._read_calls())

    def _read_calls(self) -> list[ParsedCall]:
        """The calls complete at the head of the buffer (each removed with its ``;`` separator)."""
        done: list[ParsedCall] = []
        while True:
            rest = self._buffer.lstrip().lstrip(";").lstrip()
            if not rest.startswith("{"):
                self._buffer = rest
                return done
            try:
                value, end = _decoder.raw_decode(rest)
            except ValueError:
                self._buffer = rest
                return done
            if not self._calls and not done and isinstance(value, dict) and not _looks_like_call(value):
                self._buffer = rest
                return done  # a JSON answer, not a call: decided at the end
            call = call_from_object(value, rest[:end], _KEYS)
            done.append(call)
            self._calls.append(call)
            self._buffer = rest[end:]

    def finish(self) -> list[Event]:
        rest, self._buffer = self._buffer, ""
        if self._mode != "calls":
            return [rest] if rest else []
        if not self._calls and _is_json_answer(rest):
            return [rest]
        return [unreadable(rest)] if rest.strip() else []


def _is_json_answer(text: str) -> bool:
    """Whether ``text`` opens with a JSON object that is not a call."""
    try:
        value, _ = _decoder.raw_decode(text.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and not _looks_like_call(value)


def _looks_like_call(value: dict[str, object]) -> bool:
    return "name" in value or any(key in value for key in _KEYS)
