"""OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` of a chat request as the GatewayRequest's (the
shapes are genmesh.client.tool_specs', shared with the Python client), and the names the gateway's field paths
have in the body: ``tools[0].function.parameters_json_schema`` is ``tools[0].function.parameters``,
``tool_choice.tool_name`` is ``tool_choice.function.name``, ``max_steps`` is ``genmesh.max_steps``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.http.errors import bad_field
from genmesh.client.errors import FieldError
from genmesh.client.tool_specs import tool_choice, tool_declarations
from genmesh.v1 import gateway_pb2

TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
"""The chat request's fields this module reads."""


def parse_tools(body: Mapping[str, Any], request: gateway_pb2.GatewayRequest) -> dict[str, str]:
    """Fill ``request``'s tools, tool_choice and parallel_tool_calls from ``body``; the names of their gateway
    field paths in the body (for errors.openai_name). HttpError 400 naming the field of a bad shape."""
    try:
        if body.get("tools") is not None:
            request.tools.extend(tool_declarations(body["tools"]))
        if body.get("tool_choice") is not None:
            request.tool_choice.CopyFrom(tool_choice(body["tool_choice"]))
    except FieldError as error:
        raise bad_field(error.path, error.message) from None
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise bad_field("parallel_tool_calls", "must be a boolean", "invalid_type")
        request.parallel_tool_calls = parallel
    return _names(body, request)


def _names(body: Mapping[str, Any], request: gateway_pb2.GatewayRequest) -> dict[str, str]:
    names = {"max_steps": "genmesh.max_steps"}
    for i, tool in enumerate(request.tools):
        if tool.HasField("function"):
            names[f"tools[{i}].function.parameters_json_schema"] = f"tools[{i}].function.parameters"
        else:
            names[f"tools[{i}].server_tool"] = f"tools[{i}].name"
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") == "allowed_tools":
        names["tool_choice.mode"] = "tool_choice.allowed_tools.mode"
        for j, tool in enumerate(choice["allowed_tools"]["tools"]):
            inner = "name" if tool.get("type") == "genmesh_tool" else "function.name"
            names[f"tool_choice.allowed_tool_names[{j}]"] = f"tool_choice.allowed_tools.tools[{j}].{inner}"
    elif isinstance(choice, Mapping):
        names["tool_choice.tool_name"] = (
            "tool_choice.name" if choice.get("type") == "genmesh_tool" else ("tool_choice.function.name")
        )
    else:
        names["tool_choice.mode"] = "tool_choice"
    return names
