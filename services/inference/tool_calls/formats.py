"""The tool-call formats by name: how calls are written (for the grammar), which parser reads them, and which
format a chat template implies.

A format writes a turn's calls as ``prefix call (separator call)* suffix`` where each call is
``open {"name": "<name>", "<arguments key>": <arguments>} close``; ``marker`` is the text that starts calls, which
an unconstrained text answer must not hold (AUTO's text branch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.inference.tool_calls.base import Parser
from services.inference.tool_calls.hermes import HermesParser
from services.inference.tool_calls.llama3 import PYTHON_TAG, Llama3JsonParser
from services.inference.tool_calls.mistral import MARKER, MistralParser


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """One way a model writes its calls."""

    name: str
    new_parser: Callable[[], Parser]
    arguments_key: str
    open: str = ""
    close: str = ""
    separator: str = ""
    prefix: str = ""
    suffix: str = ""
    marker: str = ""
    """Text that starts calls: a text answer may not hold it (with ``marker_anywhere`` False: not begin with it)."""
    marker_anywhere: bool = True


HERMES = ToolFormat("hermes", HermesParser, "arguments", "<tool_call>\n", "\n</tool_call>", "\n", marker="<tool_call>")
LLAMA3_JSON = ToolFormat(
    "llama3_json", Llama3JsonParser, "parameters", separator="; ", marker="{", marker_anywhere=False
)
MISTRAL = ToolFormat(
    "mistral", MistralParser, "arguments", separator=", ", prefix=MARKER + "[", suffix="]", marker=MARKER
)

FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON, MISTRAL)}
"""The formats by the name ``--tool-call-parser`` takes."""

AUTO = "auto"
"""``--tool-call-parser auto``: the format the chat template implies."""


def detect_format(template_source: str) -> ToolFormat:
    """The format a chat template's text implies: Mistral's for ``[TOOL_CALLS]``, Hermes for ``<tool_call>``,
    Llama 3's JSON for ``<|python_tag|>`` or its "parameters" call instruction; else Hermes (the default
    template's)."""
    if MARKER in template_source:
        return MISTRAL
    if "<tool_call>" in template_source:
        return HERMES
    if PYTHON_TAG in template_source or '"parameters": dictionary of argument name' in template_source:
        return LLAMA3_JSON
    return HERMES


def tool_format(name: str, template_source: str) -> ToolFormat:
    """The format ``--tool-call-parser`` names (``auto``: detected from the template); ValueError for an unknown
    name."""
    if name == AUTO:
        return detect_format(template_source)
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}: one of {', '.join([AUTO, *FORMATS])}") from None
