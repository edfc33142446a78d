"""Tools offered to the model and the tool choice, from OpenAI's shapes (the client's arguments and the HTTP front's
body share them): ``{"type": "function", "function": {name, description, parameters, strict}}`` is a function the
client runs, genmesh's ``{"type": "genmesh_tool", "name": "<registry tool or *>"}`` a tool the gateway runs;
``tool_choice`` is ``"none"``, ``"auto"``, ``"required"``, ``{"type": "function", "function": {"name"}}`` or
``{"type": "allowed_tools", "allowed_tools": {"mode": "auto" | "required", "tools": [...]}}``. A shape that cannot
be sent is a FieldError naming its key; the gateway checks the rest (names, schemas, unknown tools)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from genmesh.client.errors import FieldError
from genmesh.v1 import common_pb2, gateway_pb2

MODES = {
    "auto": common_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": common_pb2.TOOL_CHOICE_MODE_NONE,
    "required": common_pb2.TOOL_CHOICE_MODE_REQUIRED,
}
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
_TOOL_KEYS = {"function": frozenset({"type", "function"}), "genmesh_tool": frozenset({"type", "name"})}


def _object(value: object, where: str, shape: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(where, f"must be an object {shape}")
    return value


def _known(value: Mapping[str, Any], keys: frozenset[str], where: str) -> None:
    for key in value:
        if key not in keys:
            raise FieldError(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(keys))})")


def _string(value: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    item = value.get(key)
    if item is None and not required:
        return ""
    if not isinstance(item, str):
        raise FieldError(f"{where}.{key}", "must be a string" if item is not None else "is required")
    return item


def _tool_type(value: Mapping[str, Any], where: str, types: Sequence[str]) -> str:
    kind = value.get("type")
    if kind not in types:
        raise FieldError(f"{where}.type", f"must be one of {', '.join(map(repr, types))}, got {kind!r}")
    return str(kind)


def function_declaration(value: object, where: str) -> common_pb2.FunctionDeclaration:
    """OpenAI's ``function`` object: ``name``, optional ``description``, ``parameters`` (a JSON Schema object,
    absent: any object) and ``strict``."""
    function = _object(value, where, "{name, description, parameters, strict}")
    _known(function, _FUNCTION_KEYS, where)
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise FieldError(f"{where}.parameters", "must be a JSON Schema object")
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise FieldError(f"{where}.strict", "must be a boolean")
    return common_pb2.FunctionDeclaration(
        name=_string(function, "name", where, required=True),
        description=_string(function, "description", where),
        parameters_json_schema=json.dumps(parameters) if parameters is not None else "",
        strict=bool(strict),
    )


def tool_declaration(value: object, where: str) -> gateway_pb2.ToolDeclaration:
    """One entry of ``tools``: a ToolDeclaration as is, ``{"type": "function", "function": {...}}`` (a function
    the client runs) or ``{"type": "genmesh_tool", "name": ...}`` (a tool the gateway runs)."""
    if isinstance(value, gateway_pb2.ToolDeclaration):
        return value
    if isinstance(value, common_pb2.FunctionDeclaration):
        return gateway_pb2.ToolDeclaration(function=value)
    tool = _object(value, where, '{"type": "function", "function": {...}} or {"type": "genmesh_tool", "name"}')
    kind = _tool_type(tool, where, tuple(_TOOL_KEYS))
    _known(tool, _TOOL_KEYS[kind], where)
    if kind == "genmesh_tool":
        return gateway_pb2.ToolDeclaration(server_tool=_string(tool, "name", where, required=True))
    return gateway_pb2.ToolDeclaration(function=function_declaration(tool.get("function"), f"{where}.function"))


def tool_declarations(value: object, where: str = "tools") -> list[gateway_pb2.ToolDeclaration]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise FieldError(where, "must be an array of tools")
    return [tool_declaration(tool, f"{where}[{i}]") for i, tool in enumerate(value)]


def _named(value: object, where: str) -> str:
    """The name of ``{"type": "function", "function": {"name"}}`` or ``{"type": "genmesh_tool", "name"}``."""
    named = _object(value, where, '{"type": "function", "function": {"name"}}')
    kind = _tool_type(named, where, tuple(_TOOL_KEYS))
    _known(named, _TOOL_KEYS[kind], where)
    if kind == "genmesh_tool":
        return _string(named, "name", where, required=True)
    function = _object(named.get("function"), f"{where}.function", "{name}")
    _known(function, frozenset({"name"}), f"{where}.function")
    return _string(function, "name", f"{where}.function", required=True)


def tool_choice(value: object, where: str = "tool_choice") -> common_pb2.ToolChoice:
    """OpenAI's ``tool_choice`` (a ToolChoice as is): a mode, a named tool, or the allowed tools and their mode."""
    if isinstance(value, common_pb2.ToolChoice):
        return value
    if isinstance(value, str):
        if value not in MODES:
            raise FieldError(where, f"must be one of {', '.join(map(repr, MODES))} or an object, got {value!r}")
        return common_pb2.ToolChoice(mode=MODES[value])
    choice = _object(value, where, '{"type": "function", "function": {"name"}} or {"type": "allowed_tools", ...}')
    if choice.get("type") != "allowed_tools":
        return common_pb2.ToolChoice(tool_name=_named(choice, where))
    _known(choice, frozenset({"type", "allowed_tools"}), where)
    at = f"{where}.allowed_tools"
    allowed = _object(choice.get("allowed_tools"), at, "{mode, tools}")
    _known(allowed, frozenset({"mode", "tools"}), at)
    mode = allowed.get("mode")
    if mode not in ("auto", "required"):
        raise FieldError(f"{at}.mode", f"must be 'auto' or 'required', got {mode!r}")
    tools = allowed.get("tools")
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence) or not tools:
        raise FieldError(f"{at}.tools", "must be a non-empty array of tools")
    names = [_named(tool, f"{at}.tools[{i}]") for i, tool in enumerate(tools)]
    return common_pb2.ToolChoice(mode=MODES[str(mode)], allowed_tool_names=names)
