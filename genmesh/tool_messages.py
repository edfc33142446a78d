"""The messages that carry an agent loop's steps back to the model, in JobResult.output_messages' shape: per step
an assistant turn with the step's text and every call it made, then one tool message per call the gateway
answered, in call order (a client function's tool message is the caller's to add). The gateway's loop grows its
conversation with them; the clients (genmesh.client's Answer, the HTTP front) hand them to the caller, in
OpenAI's shape, to continue the conversation with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from genmesh.errors import InvalidArgument
from genmesh.function_declarations import NAME
from genmesh.messages import MAX_MESSAGE_CHARS, ROLE_NAMES, message_text
from genmesh.schema import parse_object
from genmesh.status import code_of_value
from genmesh.v1 import common_pb2

CUT_MARK = " [cut]"
"""Ends a text cut short to fit."""
UNREADABLE_NAME = "unknown_tool"
"""The name a message gives a call whose name the parser could not read (a message needs a valid one)."""


class CallLike(Protocol):
    """A tool call: common_pb2.ToolCall, or genmesh.client's ToolCall."""

    @property
    def call_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def arguments_json(self) -> str: ...


def tool_result_content(result: common_pb2.ToolResult) -> str:
    """What the model reads of a result: its JSON, or ``{"error": {"code", "message"}}``; at most one message's
    worth (cut, with CUT_MARK)."""
    if result.HasField("error"):
        code = code_of_value(result.error.status.code).name
        text = json.dumps({"error": {"code": code, "message": result.error.status.message}})
    else:
        text = result.result_json or "null"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - len(CUT_MARK)] + CUT_MARK
    return text


def readable_call(call: CallLike) -> tuple[str, str]:
    """The name and arguments a message gives ``call``: an unreadable name as ``unknown_tool`` and arguments that
    are not a JSON object as ``{}``, so that the message stays one the gateway accepts and a template renders."""
    name = call.name if NAME.fullmatch(call.name) else UNREADABLE_NAME
    try:
        parse_object(call.arguments_json, "arguments_json")
    except InvalidArgument:
        return name, "{}"
    return name, call.arguments_json or "{}"


def assistant_turn(text: str, calls: Iterable[CallLike]) -> common_pb2.ChatMessage:
    """A step's assistant turn: its text and every call it made (readable_call's), ids as given."""
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT)
    if text:
        message.content.add(text=text)
    for call in calls:
        name, arguments = readable_call(call)
        message.tool_calls.add(call_id=call.call_id, name=name, arguments_json=arguments)
    return message


def tool_turn(call_id: str, content: str) -> common_pb2.ChatMessage:
    """The ROLE_TOOL message answering call ``call_id``."""
    return common_pb2.ChatMessage(
        role=common_pb2.ROLE_TOOL, content=[common_pb2.ContentPart(text=content)], tool_call_id=call_id
    )


@dataclass(slots=True)
class _Step:
    text: str
    calls: list[CallLike]


@dataclass(slots=True)
class StepTurns:
    """Gathers a stream's agent loop steps, fed its events in order (sample 0's), into their messages."""

    _steps: list[_Step] = field(default_factory=list)
    _text: list[str] = field(default_factory=list)
    _calls: list[CallLike] = field(default_factory=list)
    _results: dict[str, str] = field(default_factory=dict)

    def text(self, text: str) -> None:
        """A delta of the step under way."""
        self._text.append(text)

    def call(self, call: CallLike) -> None:
        """A call of the step under way."""
        self._calls.append(call)

    def end_step(self) -> None:
        self._steps.append(_Step("".join(self._text), self._calls))
        self._text, self._calls = [], []

    def result(self, call_id: str, content: str) -> None:
        """The gateway's result of a call (tool_result_content's text)."""
        self._results[call_id] = content

    @property
    def answered(self) -> bool:
        """Whether the gateway answered a call of a step (a server tool's, or a call it rejected)."""
        return any(c.call_id in self._results for step in self._steps for c in step.calls)

    def messages(self) -> list[common_pb2.ChatMessage]:
        """Per step its assistant turn, then a tool message per answered call in call order; a step with neither
        text nor calls is left out (the gateway refuses an empty message)."""
        out: list[common_pb2.ChatMessage] = []
        for step in self._steps:
            if not step.text and not step.calls:
                continue
            out.append(assistant_turn(step.text, step.calls))
            out.extend(tool_turn(c.call_id, self._results[c.call_id]) for c in step.calls if c.call_id in self._results)
        return out


def openai_tool_call(call: CallLike) -> dict[str, Any]:
    """OpenAI's ``message.tool_calls`` entry ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    name, arguments = readable_call(call)
    return {"id": call.call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def openai_message(message: common_pb2.ChatMessage) -> dict[str, Any]:
    """A ChatMessage as OpenAI's message dict (``content`` null for an assistant's that only calls)."""
    text = message_text(message)
    out: dict[str, Any] = {"role": ROLE_NAMES[message.role], "content": text}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["content"] = text or None
        out["tool_calls"] = [openai_tool_call(c) for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out
