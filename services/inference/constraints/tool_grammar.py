"""The grammar of a request's tool calls (llguidance Lark, each tool's arguments an embedded ``%json`` schema).

REQUIRED or a named tool: ``start: calls``, one call or (parallel) 1..``max_calls`` (``--max-tool-calls``), each
``{"name": "<tool>", "<arguments key>": <arguments>}`` in the format's framing, the arguments valid for that
tool's schema (each schema is its own ``%json`` root, so its ``$ref``s resolve; compiled leniently: keywords
llguidance does not implement are left to the gateway's jsonschema check, never refused). AUTO: ``start: calls | text``,
where text is the response_format when one is set (JSON schema or object, regex, choice; a Lark/EBNF grammar is
refused) and else any text that holds no call marker (for Llama 3's JSON: that does not begin with ``{``), so
that a text answer is never read as a call. The grammar is handed to the engine as a Lark ResponseFormat: the
GrammarCompiler's cache and the mask prefetch serve it as any other format.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import llguidance

from genmesh.errors import InvalidArgument
from genmesh.response_format import FormatKind, ResponseFormat
from services.inference.constraints.compiler import json_rule

if TYPE_CHECKING:
    from services.inference.tool_calls.formats import ToolFormat
    from services.inference.tool_calls.request import ToolRequest

_ANY = "/(?s:.*)/"
DEFAULT_MAX_CALLS = 8
"""Calls one turn may hold (parallel_tool_calls) unless ``--max-tool-calls`` says otherwise: a small model, once
calling, tends to call on until its tokens run out."""
MAX_CALLS_LIMIT = 64
"""The largest ``--max-tool-calls``."""


def _literal(text: str) -> str:
    return json.dumps(text)


def _calls(request: ToolRequest, fmt: ToolFormat, max_calls: int) -> list[str]:
    """The rules of ``calls``: the framing, and one ``call_i``/``args_i`` pair per callable tool."""
    rules = []
    names = []
    for i, tool in enumerate(request.callable_tools()):
        head = f'{fmt.open}{{"name": "{tool.name}", "{fmt.arguments_key}": '
        tail = "}" + fmt.close
        rules.append(f"call_{i}: {_literal(head)} args_{i} {_literal(tail)}")
        rules.append(f"args_{i}: {json_rule(tool.schema, lenient=True)}")
        names.append(f"call_{i}")
    rules.append("call: " + " | ".join(names))
    more = ""
    if request.parallel and max_calls > 1:
        separator = _literal(fmt.separator) + " " if fmt.separator else ""
        more = f" ({separator}call){{0,{max_calls - 1}}}"
    framed = [_literal(fmt.prefix)] if fmt.prefix else []
    framed += ["call" + more]
    framed += [_literal(fmt.suffix)] if fmt.suffix else []
    rules.append("calls: " + " ".join(framed))
    return rules


def _text(fmt: ToolFormat, response_format: ResponseFormat | None) -> list[str]:
    """The rules of AUTO's ``text`` branch."""
    marker = _literal(fmt.marker)
    if response_format is None:
        held = f"{_ANY} {marker} {_ANY}" if fmt.marker_anywhere else f"/\\s*/ {marker} {_ANY}"
        return ["text: TEXT", f"TEXT: /(?s:.+)/ & ~({held})"]
    kind = response_format.kind
    if kind in (FormatKind.JSON_SCHEMA, FormatKind.JSON_OBJECT):
        return [f"text: {json_rule(json.loads(response_format.text))}"]
    if kind is FormatKind.REGEX:
        pattern = llguidance.regex_to_lark(response_format.text)
        return ["text: TEXT", f"TEXT: /{pattern}/ & ~({_ANY} {marker} {_ANY})"]
    if kind is FormatKind.CHOICE:
        choices: list[str] = json.loads(response_format.text)
        return ["text: " + " | ".join(_literal(c) for c in choices)]
    raise InvalidArgument.field("response_format", "a grammar cannot be combined with tools and tool_choice AUTO")


def tool_grammar(
    request: ToolRequest,
    fmt: ToolFormat,
    response_format: ResponseFormat | None,
    max_calls: int = DEFAULT_MAX_CALLS,
) -> ResponseFormat | None:
    """The structure the output must have: the calls' grammar (REQUIRED, named), calls or text (AUTO), or
    ``response_format`` itself (NONE). ``max_calls``: the most calls one turn holds (with parallel_tool_calls)."""
    if request.choice == "none":
        return response_format
    rules = _calls(request, fmt, max_calls)
    if request.constrained_calls:
        rules.insert(0, "start: calls")
    else:
        rules[:0] = ["start: calls | text", *_text(fmt, response_format)]
    return ResponseFormat(FormatKind.LARK, "\n".join(rules))
