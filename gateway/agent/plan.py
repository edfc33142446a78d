"""The agent part of a GatewayRequest (tools, tool_choice, max_steps, parallel_tool_calls) checked into an AgentPlan.

Every bad field is named (``tools[2].function.parameters_json_schema``, ``tool_choice.tool_name``, ``max_steps``);
server tools come from the tools service's listing (``"*"``: every tool the caller's key may call), functions from
the request. Names are unique across both: a later entry that repeats an earlier one's name is refused (a server
tool and a function of one name, in either order, ``"*"`` included). A function is checked by genmesh's
function_declarations, as inference checks it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.auth.caller import may_call_tool
from genmesh.errors import FieldViolation, quote
from genmesh.function_declarations import check_declaration
from genmesh.messages import MAX_MESSAGES
from genmesh.v1 import common_pb2, gateway_pb2, tools_pb2

MAX_TOOLS = 128
MAX_STEPS = 16
DEFAULT_MAX_STEPS = 4
ALL_TOOLS = "*"
_TOOL_FIELD = re.compile(r"tools\[(\d+)\]")
_MODES = frozenset(common_pb2.ToolChoiceMode.values())


@dataclass(frozen=True, slots=True)
class AgentTool:
    """One tool offered to the model: its declaration, its arguments' schema, and who runs it."""

    declaration: common_pb2.FunctionDeclaration
    schema: Mapping[str, Any]
    server: bool
    """True: the gateway runs it through the tools service; False: a client function."""
    origin: str = ""
    """The client's field that declared it: ``tools[i].function`` or ``tools[i].server_tool`` (``"*"`` too)."""

    @property
    def name(self) -> str:
        return self.declaration.name


@dataclass(frozen=True, slots=True)
class AgentPlan:
    """The checked agent loop of a request."""

    tools: Mapping[str, AgentTool]
    """By name, in the request's order (server tools of "*" by name)."""
    tool_choice: common_pb2.ToolChoice
    max_steps: int
    parallel_tool_calls: bool | None
    """None: unset (inference's default, true)."""

    def declarations(self) -> list[common_pb2.FunctionDeclaration]:
        """What GenerateRequest.tools carries."""
        return [tool.declaration for tool in self.tools.values()]

    def request_index(self, position: int) -> str:
        """The client's field of GenerateRequest.tools[``position``] (what ``declarations`` sends):
        ``tools[i].function`` for a function, ``tools[i].server_tool`` for a server tool (``"*"`` expands to many)."""
        return list(self.tools.values())[position].origin

    def client_field(self, field: str) -> str:
        """Inference's field ``tools[k]…`` as the client's: ``tools[i].function…`` for a function (the rest kept);
        ``tools[i].server_tool`` for a server tool (its declaration is the tools service's). Other fields as they
        are."""
        found = _TOOL_FIELD.match(field)
        if found is None or int(found[1]) >= len(self.tools):
            return field
        origin = self.request_index(int(found[1]))
        return origin if origin.endswith(".server_tool") else origin + field[found.end() :]

    def choice(self, step: int) -> common_pb2.ToolChoice:
        """The tool_choice of ``step``: the request's, but NONE on the last step (a forced answer)."""
        if step < self.max_steps:
            return self.tool_choice
        return common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_NONE)


def plan_agent(
    request: gateway_pb2.GatewayRequest,
    specs: Mapping[str, tools_pb2.ToolSpec] | None,
    may_call: frozenset[str],
    bad: list[FieldViolation],
) -> AgentPlan | None:
    """The request's agent plan (None without tools), its violations added to ``bad``. ``specs``: the tools
    service's tools (None: not asked, the server tools are left unchecked and out of the plan); ``may_call``: the
    tools the caller's key may call (empty: all)."""
    if not request.tools:
        for field in ("tool_choice", "max_steps", "parallel_tool_calls"):
            if request.HasField(field):
                bad.append(FieldViolation(field, "needs tools"))
        return None
    if len(request.tools) > MAX_TOOLS:
        bad.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools, got {len(request.tools)}"))
        return None
    tools: dict[str, AgentTool] = {}
    for i, declared in enumerate(request.tools):
        _add_tool(declared, f"tools[{i}]", specs, may_call, tools, bad)
    max_steps = request.max_steps if request.HasField("max_steps") else DEFAULT_MAX_STEPS
    if not 1 <= max_steps <= MAX_STEPS:
        bad.append(FieldViolation("max_steps", f"must be between 1 and {MAX_STEPS}"))
    elif (given := max(len(request.messages), 1)) <= MAX_MESSAGES < given + 2 * max_steps:
        room = (MAX_MESSAGES - given) // 2
        bad.append(
            FieldViolation(
                "max_steps",
                f"{max_steps} steps may grow the {given} messages past {MAX_MESSAGES} (2 per step): at most {room}",
            )
        )
    unlisted = specs is None and any(t.WhichOneof("kind") == "server_tool" for t in request.tools)
    _check_choice(request.tool_choice, tools, unlisted, bad)
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
    return AgentPlan(tools, request.tool_choice, max_steps, parallel)


def _add_tool(
    declared: gateway_pb2.ToolDeclaration,
    at: str,
    listed: Mapping[str, tools_pb2.ToolSpec] | None,
    may_call: frozenset[str],
    tools: dict[str, AgentTool],
    bad: list[FieldViolation],
) -> None:
    kind = declared.WhichOneof("kind")
    if kind == "server_tool" and listed is None:
        return  # left to the run (SubmitJob checks a job's request without asking the tools service)
    if kind == "server_tool":
        specs = listed or {}
        name = declared.server_tool
        callable_ = sorted(n for n in specs if may_call_tool(may_call, n))
        field = f"{at}.server_tool"
        if name == ALL_TOOLS:
            clashes = [each for each in callable_ if each in tools and not tools[each].server]
            if clashes:
                bad.append(FieldViolation(field, f"a function is named {quote(clashes[0])} too"))
            for each in callable_:
                tools.setdefault(each, _server_tool(specs[each], field))
        elif name in callable_:
            if name in tools and not tools[name].server:
                bad.append(FieldViolation(field, f"a function is named {quote(name)} too"))
            tools.setdefault(name, _server_tool(specs[name], field))
        else:
            known = ", ".join(callable_[:32]) or "none"
            bad.append(FieldViolation(field, f"unknown tool {quote(name)} (known: {known})"))
    elif kind == "function":
        function = declared.function
        schema = check_declaration(function, f"{at}.function", bad)
        if function.name in tools:
            bad.append(FieldViolation(f"{at}.function.name", f"another tool is named {quote(function.name)}"))
        elif schema is not None:
            tools[function.name] = AgentTool(function, schema, server=False, origin=f"{at}.function")
    else:
        bad.append(FieldViolation(at, "must be a server_tool or a function"))


def _server_tool(spec: tools_pb2.ToolSpec, origin: str) -> AgentTool:
    declaration = common_pb2.FunctionDeclaration(
        name=spec.name, description=spec.description, parameters_json_schema=spec.parameters_json_schema
    )
    return AgentTool(declaration, json.loads(spec.parameters_json_schema or "{}"), server=True, origin=origin)


def _check_choice(
    choice: common_pb2.ToolChoice, tools: Mapping[str, AgentTool], unlisted: bool, bad: list[FieldViolation]
) -> None:
    """``unlisted``: server tools were left unchecked, so a name may be one of theirs."""
    kind = choice.WhichOneof("choice")
    if kind == "mode" and choice.mode not in _MODES:
        bad.append(FieldViolation("tool_choice.mode", f"unknown mode {choice.mode}"))
    if unlisted:
        return
    if kind == "tool_name" and choice.tool_name not in tools:
        bad.append(FieldViolation("tool_choice.tool_name", f"names no tool of the request: {quote(choice.tool_name)}"))
    for j, name in enumerate(choice.allowed_tool_names):
        if name not in tools:
            bad.append(FieldViolation(f"tool_choice.allowed_tool_names[{j}]", f"names no tool: {quote(name)}"))
