"""User plugins: ``@tool`` turns a typed Python function into a tool; plugins are found by entry point or spec.

    from services.tools.plugins import tool

    @tool(timeout_s=5, idempotent=True)
    async def weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, float]:
        # Docstring: "The current temperature in a city." then an "Args:" section with
        # "city: Name of the city, e.g. Paris." and "unit: Temperature unit."
        ...

The JSON Schema of the arguments comes from the type hints (``str``, ``int``, ``float``, ``bool``,
``list[...]``, ``dict[str, ...]``, ``Literal[...]``, enums, ``X | None``, ``Annotated[X, "description"]``)
and the defaults; the description from the docstring's first paragraph, and each argument's description
from a Google-style ``Args:`` or NumPy-style ``Parameters`` section. The function stays callable as before;
the tool hangs on it as ``__genmesh_tool__``.

Plugins are found through the entry-point group ``genmesh.tools`` and through ``--tools-module
module:attr`` (or ``module`` alone: every ``@tool`` function in it), where ``attr`` is a tool, a list of
tools, or a callable returning them.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import logging
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any, Literal, TypeVar, get_args, get_origin, overload

from services.tools.tool import DEFAULT_TOOL_TIMEOUT_S, Tool, ToolHandler

log = logging.getLogger("genmesh.tools")

ENTRY_POINT_GROUP = "genmesh.tools"
TOOL_ATTRIBUTE = "__genmesh_tool__"
_F = TypeVar("_F", bound=Callable[..., Any])
_SCALARS: dict[type, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_SECTION_HEADERS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_OTHER_SECTIONS = {
    "returns",
    "return",
    "yields",
    "raises",
    "examples",
    "example",
    "notes",
    "note",
    "see also",
    "references",
    "attributes",
    "warnings",
    "warning",
    "todo",
}


class PluginError(ValueError):
    """A plugin could not be loaded or turned into a tool (bad spec, unsupported type hint, bad value)."""


@overload
def tool(function: _F, /) -> _F: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    idempotent: bool = False,
    blocking: bool | None = None,
) -> Callable[[_F], _F]: ...


def tool(
    function: _F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    idempotent: bool = False,
    blocking: bool | None = None,
) -> _F | Callable[[_F], _F]:
    """Make ``function`` a tool (``@tool`` or ``@tool(...)``); the function itself is returned unchanged.

    ``name`` defaults to the function's name, ``description`` to its docstring's summary. ``blocking``
    defaults to True for plain functions (they run in the service's thread pool) and must stay unset or
    False for ``async def`` ones (they run on the event loop). Raises PluginError for parameters whose type
    cannot be described in JSON Schema.
    """

    def decorate(fn: _F) -> _F:
        setattr(
            fn,
            TOOL_ATTRIBUTE,
            function_tool(
                fn, name=name, description=description, timeout_s=timeout_s, idempotent=idempotent, blocking=blocking
            ),
        )
        return fn

    return decorate(function) if function is not None else decorate


def function_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    idempotent: bool = False,
    blocking: bool | None = None,
    source: str = "plugin",
) -> Tool:
    """The Tool for ``fn`` (what ``@tool`` attaches): its schema derived from the signature and docstring."""
    is_async = inspect.iscoroutinefunction(fn)
    if blocking and is_async:
        raise PluginError(f"{fn.__qualname__}: an async function cannot be blocking")
    summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
    parameters = schema_for(fn, arg_docs)
    tool_name = name or fn.__name__
    enums = _enum_parameters(fn)

    def prepare(arguments: dict[str, Any]) -> dict[str, Any]:
        if not enums:
            return arguments
        return {k: enums[k](v) if k in enums and v is not None else v for k, v in arguments.items()}

    async def run_async(arguments: dict[str, Any]) -> Any:
        return await fn(**prepare(arguments))

    def run_sync(arguments: dict[str, Any]) -> Any:
        return fn(**prepare(arguments))

    handler: ToolHandler = run_async if is_async else run_sync

    try:
        return Tool(
            name=tool_name,
            description=description or summary or tool_name,
            parameters=parameters,
            handler=handler,
            timeout_s=timeout_s,
            idempotent=idempotent,
            blocking=(not is_async) if blocking is None else blocking,
            source=source,
        )
    except ValueError as error:
        raise PluginError(str(error)) from None


def schema_for(fn: Callable[..., Any], arg_docs: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON Schema (an object schema) of ``fn``'s keyword arguments."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as error:
        raise PluginError(f"{fn.__qualname__}: cannot resolve its type hints: {error}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in inspect.signature(fn).parameters.values():
        where = f"{fn.__qualname__}({parameter.name})"
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise PluginError(f"{where}: *args and **kwargs cannot be described as tool arguments")
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise PluginError(f"{where}: positional-only parameters cannot be passed by name")
        if parameter.name not in hints:
            raise PluginError(f"{where}: needs a type hint")
        schema = _schema_of(hints[parameter.name], where)
        if arg_docs and parameter.name in arg_docs and "description" not in schema:
            schema["description"] = arg_docs[parameter.name]
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
        else:
            default = parameter.default.value if isinstance(parameter.default, enum.Enum) else parameter.default
            if default is not None and not isinstance(default, str | int | float | bool):
                raise PluginError(f"{where}: defaults must be None, str, int, float, bool or an enum member")
            schema["default"] = default
        properties[parameter.name] = schema
    schema_out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema_out["required"] = required
    return schema_out


def _enum_parameters(fn: Callable[..., Any]) -> dict[str, type[enum.Enum]]:
    """Parameters typed as an enum (possibly optional or annotated): their JSON values become members."""
    found: dict[str, type[enum.Enum]] = {}
    for name, hint in typing.get_type_hints(fn, include_extras=True).items():
        while get_origin(hint) is typing.Annotated:
            hint = get_args(hint)[0]
        if get_origin(hint) in (typing.Union, types.UnionType):
            options = [a for a in get_args(hint) if a is not type(None)]
            hint = options[0] if len(options) == 1 else hint
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            found[name] = hint
    return found


def _schema_of(hint: Any, where: str) -> dict[str, Any]:
    """JSON Schema of one type hint."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is typing.Annotated:
        schema = _schema_of(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            schema["description"] = " ".join(notes)
        return schema
    if hint is Any:
        return {}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is type(None):
        return {"type": "null"}
    if origin is Literal:
        kinds = {type(a) for a in args}
        if not kinds <= {str, int, float, bool}:
            raise PluginError(f"{where}: Literal values must be str, int, float or bool")
        literal: dict[str, Any] = {"enum": list(args)}
        if len(kinds) == 1:
            literal["type"] = _SCALARS[kinds.pop()]
        return literal
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [member.value for member in hint]
        if not all(isinstance(v, str | int | float) for v in values):
            raise PluginError(f"{where}: enum values must be str, int or float")
        return {"enum": values}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        if len(options) == 1 and nullable:
            inner = _schema_of(options[0], where)
            if isinstance(inner.get("type"), str) and "enum" not in inner:
                return {**inner, "type": [inner["type"], "null"]}
            return {"anyOf": [inner, {"type": "null"}]}
        return {"anyOf": [_schema_of(a, where) for a in args]}
    if origin in (list, tuple, Sequence, Iterable) or hint in (list, tuple):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return {
                "type": "array",
                "prefixItems": [_schema_of(a, where) for a in args],
                "minItems": len(args),
                "maxItems": len(args),
            }
        items = args[0] if args else Any
        return {"type": "array", "items": _schema_of(items, where)}
    if origin is dict or hint is dict:
        if args and args[0] is not str:
            raise PluginError(f"{where}: dict keys must be str")
        return {"type": "object", "additionalProperties": _schema_of(args[1], where) if args else {}}
    raise PluginError(f"{where}: type {hint!r} cannot be described as a tool argument")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, per-argument descriptions) of a docstring in Google (``Args:``) or NumPy (``Parameters``) style.

    The summary is the first paragraph, joined into one line.
    """
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip():
            break
        summary_lines.append(line.strip())
    summary = " ".join(summary_lines)
    if summary.rstrip(":").lower() in _SECTION_HEADERS:
        summary = ""
    return summary, _argument_docs(lines)


def _argument_docs(lines: list[str]) -> dict[str, str]:
    docs: dict[str, str] = {}
    i = 0
    while i < len(lines):
        header = lines[i].strip()
        numpy = i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip() or "") is not None
        if header.rstrip(":").lower() in _SECTION_HEADERS and (header.endswith(":") or numpy):
            i += 2 if numpy else 1
            i = _read_section(lines, i, numpy, docs)
        else:
            i += 1
    return docs


def _read_section(lines: list[str], i: int, numpy: bool, docs: dict[str, str]) -> int:
    """Read argument entries from line ``i`` until the section ends; returns the index after it."""
    base: int | None = None
    current: str | None = None
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            i += 1
            continue
        if base is None:
            base = indent
        next_is_rule = i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip() or "") is not None
        is_header = stripped.rstrip(":").lower() in _OTHER_SECTIONS | _SECTION_HEADERS and (
            stripped.endswith(":") or next_is_rule
        )
        if indent < base or (indent == base and is_header):
            break
        if indent == base:
            entry = (
                re.match(r"\*{0,2}(\w+)\s*(?::.*)?$", stripped)
                if numpy
                else re.match(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", stripped)
            )
            if entry is None:
                break
            current = entry.group(1)
            docs[current] = "" if numpy else entry.group(2).strip()
        elif current is not None:
            docs[current] = f"{docs[current]} {stripped}".strip()
        i += 1
    return i


def collect_tools(value: Any, origin: str, *, call_factories: bool = True) -> list[Tool]:
    """The tools ``value`` stands for: a Tool, a ``@tool`` function, a module (its ``@tool`` functions), a
    list or tuple of those, or (when ``call_factories``) a callable returning them. ``origin`` names the
    plugin in errors."""
    if isinstance(value, Tool):
        return [value]
    attached = getattr(value, TOOL_ATTRIBUTE, None)
    if isinstance(attached, Tool):
        return [attached]
    if isinstance(value, types.ModuleType):
        found = [v for v in vars(value).values() if isinstance(getattr(v, TOOL_ATTRIBUTE, None), Tool)]
        if not found:
            raise PluginError(f"{origin}: module {value.__name__} has no @tool functions")
        return [getattr(v, TOOL_ATTRIBUTE) for v in found]
    if isinstance(value, list | tuple):
        return [t for item in value for t in collect_tools(item, origin, call_factories=False)]
    if call_factories and callable(value):
        try:
            produced = value()
        except Exception as error:
            raise PluginError(f"{origin}: calling it failed: {type(error).__name__}: {error}") from error
        return collect_tools(produced, origin, call_factories=False)
    raise PluginError(f"{origin}: {type(value).__name__} is not a tool, a list of tools or a callable returning them")


def load_spec(spec: str) -> list[Tool]:
    """The tools of ``module:attr`` (``attr`` may be dotted) or of ``module`` alone; raises PluginError."""
    module_name, _, attr = spec.partition(":")
    if not module_name or (_ and not attr):
        raise PluginError(f"tools module {spec!r} must look like module or module:attr")
    try:
        value: Any = importlib.import_module(module_name)
    except Exception as error:
        raise PluginError(
            f"tools module {spec!r}: cannot import {module_name}: {type(error).__name__}: {error}"
        ) from None
    for part in filter(None, attr.split(".")):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise PluginError(f"tools module {spec!r}: {module_name} has no attribute {attr!r}") from None
    return collect_tools(value, f"tools module {spec!r}")


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[Tool]:
    """The tools of every installed entry point of ``group``; a plugin that fails to load is logged and
    skipped, so one broken package cannot take the service down."""
    found: list[Tool] = []
    for point in entry_points(group=group):
        try:
            found.extend(collect_tools(point.load(), f"entry point {point.name} ({point.value})"))
        except Exception as error:
            log.error("skipping tool plugin", extra={"entry_point": point.name, "error": str(error)})
    return found
