"""Chat messages (common.proto ChatMessage): the bounds every service checks, and the plain dicts chat templates read.

A message becomes the dict Hugging Face chat templates expect: ``role`` ("system", "user", "assistant",
"tool"), ``content`` as one string (the text parts joined with "\\n", as vLLM does), plus ``name``,
``tool_calls`` (``[{"id", "type": "function", "function": {"name", "arguments": <object>}}]``) and
``tool_call_id`` when set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genmesh.errors import FieldViolation, InvalidArgument
from genmesh.function_declarations import name_violation
from genmesh.limits import call_id_violation
from genmesh.schema import parse_object
from genmesh.v1 import common_pb2

MAX_MESSAGES = 256
"""A request's messages: at most this many (common.proto ChatMessage)."""
MAX_MESSAGE_CHARS = 65_536
"""The text of one message, all its parts together: at most this many characters."""

ROLE_NAMES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
}


def message_text(message: common_pb2.ChatMessage) -> str:
    """The text of ``message``: its text parts joined with a newline."""
    return "\n".join(part.text for part in message.content if part.WhichOneof("part") == "text")


def last_user_text(messages: Sequence[common_pb2.ChatMessage]) -> str:
    """The text of the last ROLE_USER message ("" when there is none)."""
    return next((message_text(m) for m in reversed(messages) if m.role == common_pb2.ROLE_USER), "")


def message_violations(
    messages: Sequence[common_pb2.ChatMessage], field: str = "messages", images: bool = False
) -> list[FieldViolation]:
    """What is wrong with ``messages`` (at ``field``), each bad field named; empty when they are fine.

    ``images``: whether image parts are accepted (a text-only model refuses them).
    """
    if len(messages) > MAX_MESSAGES:
        return [FieldViolation(field, f"at most {MAX_MESSAGES} messages, got {len(messages)}")]
    bad: list[FieldViolation] = []
    for i, message in enumerate(messages):
        _check_message(message, f"{field}[{i}]", images, bad)
    return bad + _repeated_call_ids(messages, field)


def _check_message(message: common_pb2.ChatMessage, at: str, images: bool, bad: list[FieldViolation]) -> None:
    if message.role not in ROLE_NAMES:
        bad.append(FieldViolation(f"{at}.role", "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL"))
    for j, part in enumerate(message.content):
        kind = part.WhichOneof("part")
        if kind is None:
            bad.append(FieldViolation(f"{at}.content[{j}]", "must be text or an image"))
        elif kind == "image" and not images:
            bad.append(FieldViolation(f"{at}.content[{j}].image", "this model takes text only"))
    chars = sum(len(part.text) for part in message.content)
    if chars > MAX_MESSAGE_CHARS:
        bad.append(FieldViolation(f"{at}.content", f"at most {MAX_MESSAGE_CHARS} characters of text, got {chars}"))
    elif not message.tool_calls and not _has_content(message):
        bad.append(FieldViolation(f"{at}.content", "must not be empty"))
    if message.name and (violation := name_violation(message.name, f"{at}.name")) is not None:
        bad.append(violation)
    if message.tool_calls and message.role != common_pb2.ROLE_ASSISTANT:
        bad.append(FieldViolation(f"{at}.tool_calls", "only assistant messages carry tool calls"))
    for k, call in enumerate(message.tool_calls):
        _check_call(call, f"{at}.tool_calls[{k}]", bad)
    if message.role == common_pb2.ROLE_TOOL:
        if (violation := call_id_violation(message.tool_call_id, f"{at}.tool_call_id")) is not None:
            bad.append(violation)
        elif not message.tool_call_id:
            bad.append(FieldViolation(f"{at}.tool_call_id", "a tool message must name the call it answers"))
    elif message.tool_call_id:
        bad.append(FieldViolation(f"{at}.tool_call_id", "only tool messages answer a call"))


def _has_content(message: common_pb2.ChatMessage) -> bool:
    """Whether ``message`` has some text or an image, or a part already refused (named on its own)."""
    return any(part.WhichOneof("part") != "text" or part.text for part in message.content)


def _check_call(call: common_pb2.ToolCall, at: str, bad: list[FieldViolation]) -> None:
    if (violation := call_id_violation(call.call_id, f"{at}.call_id")) is not None:
        bad.append(violation)
    if (violation := name_violation(call.name, f"{at}.name")) is not None:
        bad.append(violation)
    try:
        parse_object(call.arguments_json, f"{at}.arguments_json")
    except InvalidArgument as error:
        bad.extend(error.violations)


def _repeated_call_ids(messages: Sequence[common_pb2.ChatMessage], field: str) -> list[FieldViolation]:
    """A violation for each tool call whose id an earlier call of the conversation already has."""
    first: dict[str, str] = {}
    bad: list[FieldViolation] = []
    for i, message in enumerate(messages):
        for k, call in enumerate(message.tool_calls):
            at = f"{field}[{i}].tool_calls[{k}].call_id"
            if call.call_id in first:
                bad.append(FieldViolation(at, f"repeats the id of {first[call.call_id]}: call ids must be unique"))
            else:
                first[call.call_id] = at
    return bad


def template_messages(messages: Sequence[common_pb2.ChatMessage]) -> list[dict[str, Any]]:
    """``messages`` (already checked) as the plain dicts a Hugging Face chat template reads."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": ROLE_NAMES[message.role], "content": message_text(message)}
        if message.name:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": c.call_id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": parse_object(c.arguments_json, "")},
                }
                for c in message.tool_calls
            ]
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out
