"""Tool calls in a model's output: the formats (Hermes/Qwen, Llama 3 JSON, Mistral), their streaming parsers,
which format a chat template implies, and a request's tools checked.

Parsers by name (``--tool-call-parser``): ``hermes`` (``<tool_call>{json}</tool_call>``, the default template's),
``llama3_json`` (the whole output ``{"name": …, "parameters": …}``, ``;``-separated), ``mistral``
(``[TOOL_CALLS][{…}, …]``); ``auto`` picks by the template's text (formats.detect_format).
"""

from services.inference.tool_calls.base import Event, ParsedCall, Parser
from services.inference.tool_calls.formats import AUTO, FORMATS, ToolFormat, detect_format, tool_format
from services.inference.tool_calls.request import ToolRequest
from services.inference.tool_calls.stream import ToolCallStream

__all__ = [
    "AUTO",
    "FORMATS",
    "Event",
    "ParsedCall",
    "Parser",
    "ToolCallStream",
    "ToolFormat",
    "ToolRequest",
    "detect_format",
    "tool_format",
]
