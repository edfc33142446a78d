"""A GenerateRequest's tools, tool_choice and parallel_tool_calls, checked: every client mistake is
INVALID_ARGUMENT naming its field (``tools[2].parameters_json_schema``, ``tool_choice.tool_name``, ...).

``response_format`` is not used with REQUIRED or a named tool (the calls' grammar replaces it, as
inference.proto says); with AUTO it shapes the text answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from genmesh.errors import FieldViolation, InvalidArgument
from genmesh.function_declarations import check_declaration
from genmesh.v1 import common_pb2, inference_pb2
from services.inference.constraints.compiler import schema_error

MAX_TOOLS = 128


class Choice(StrEnum):
    """tool_choice: AUTO (text or calls), NONE (text), REQUIRED (calls), NAMED (calls of one tool)."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True, slots=True)
class Tool:
    """One function: its arguments' JSON Schema parsed (``"type": "object"`` added when it had no type)."""

    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """The tools offered, which may be called, and how."""

    tools: tuple[Tool, ...]
    choice: Choice
    callable: tuple[str, ...]
    """Names the output may call (the named tool; the allowed ones; else all), in the tools' order."""
    parallel: bool

    @property
    def constrained_calls(self) -> bool:
        """Whether the output must be calls (REQUIRED or a named tool)."""
        return self.choice in (Choice.REQUIRED, Choice.NAMED)

    def template_tools(self) -> list[dict[str, Any]]:
        """The tools as a chat template's ``tools`` (what transformers passes for JSON-schema tools)."""
        return [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.schema}}
            for t in self.tools
        ]

    def callable_tools(self) -> list[Tool]:
        """The tools the output may call."""
        return [t for t in self.tools if t.name in self.callable]


def tool_request_from_proto(request: inference_pb2.GenerateRequest) -> ToolRequest | None:
    """The checked tools of ``request``; None when it has none (and no tool_choice)."""
    if not request.tools:
        if request.tool_choice.allowed_tool_names:
            raise InvalidArgument.field("tool_choice.allowed_tool_names[0]", "is not among the tools (there are none)")
        if request.HasField("tool_choice") and _choice(request.tool_choice) is not Choice.AUTO:
            raise InvalidArgument.field("tool_choice", "needs tools")
        return None
    if not request.messages:
        raise InvalidArgument.field("tools", "needs messages: the tools are the chat template's")
    if len(request.tools) > MAX_TOOLS:
        raise InvalidArgument.field("tools", f"at most {MAX_TOOLS} tools, got {len(request.tools)}")
    bad: list[FieldViolation] = []
    tools = [_tool(t, f"tools[{i}]", bad) for i, t in enumerate(request.tools)]
    seen: dict[str, int] = {}
    for i, tool in enumerate(request.tools):
        if tool.name in seen:
            bad.append(FieldViolation(f"tools[{i}].name", f"repeats the name of tools[{seen[tool.name]}]"))
        seen.setdefault(tool.name, i)
    choice = _choice(request.tool_choice)
    allowed = list(request.tool_choice.allowed_tool_names)
    for j, name in enumerate(allowed):
        if name not in seen:
            bad.append(FieldViolation(f"tool_choice.allowed_tool_names[{j}]", f"{name!r} is not among the tools"))
    named = request.tool_choice.tool_name
    if choice is Choice.NAMED and named not in seen:
        bad.append(FieldViolation("tool_choice.tool_name", f"{named!r} is not among the tools"))
    elif choice is Choice.NAMED and allowed and named not in allowed:
        bad.append(FieldViolation("tool_choice.tool_name", f"{named!r} is not among allowed_tool_names"))
    if bad:
        raise InvalidArgument(bad)
    names = [named] if choice is Choice.NAMED else allowed or list(seen)
    callable_ = tuple(t.name for t in tools if t is not None and t.name in names)
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
    return ToolRequest(tuple(t for t in tools if t is not None), choice, callable_, parallel)


def _choice(choice: common_pb2.ToolChoice) -> Choice:
    if choice.WhichOneof("choice") == "tool_name":
        return Choice.NAMED
    return {
        common_pb2.TOOL_CHOICE_MODE_NONE: Choice.NONE,
        common_pb2.TOOL_CHOICE_MODE_REQUIRED: Choice.REQUIRED,
    }.get(choice.mode, Choice.AUTO)


def _tool(tool: common_pb2.FunctionDeclaration, at: str, bad: list[FieldViolation]) -> Tool | None:
    """The checked tool (genmesh.function_declarations' rules, then llguidance's: it compiles the schema leniently,
    as the grammar does), or None after adding what is wrong to ``bad``."""
    schema = check_declaration(tool, at, bad)
    if schema is None:
        return None
    if (refused := schema_error(json.dumps(schema), lenient=True)) is not None:
        bad.append(FieldViolation(f"{at}.parameters_json_schema", refused))
        return None
    return Tool(tool.name, tool.description, schema)
