"""GatewayRequests from the client's keyword arguments. The gateway validates them (bad input comes back as
BadRequest naming the field); this module only builds the messages."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Required, TypedDict, Unpack

from genmesh.client.errors import FieldError
from genmesh.client.tool_specs import tool_choice as choice_of
from genmesh.client.tool_specs import tool_declaration
from genmesh.v1 import common_pb2, gateway_pb2

ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "developer": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool call to run before generation: the tool's name and its arguments (JSON-encoded when not a string)."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    call_id: str = ""
    timeout_ms: int | None = None

    def proto(self) -> common_pb2.ToolCall:
        arguments = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)
        call = common_pb2.ToolCall(call_id=self.call_id, name=self.name, arguments_json=arguments)
        if self.timeout_ms is not None:
            call.timeout_ms = self.timeout_ms
        return call


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling parameters; None leaves a parameter to the server's documented default. ``logprobs``: each token's
    log-probability with this many top alternatives (0..20; SamplingParams.logprobs), in Delta.logprobs."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    logprobs: int | None = None

    def proto(self) -> common_pb2.SamplingParams:
        params = common_pb2.SamplingParams(stop=list(self.stop))
        for name in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "logprobs"):
            value = getattr(self, name)
            if value is not None:
                setattr(params, name, value)
        return params


class TextPart(TypedDict):
    """A text part of a message's content, OpenAI's ``{"type": "text", "text": "..."}``."""

    type: Literal["text"]
    text: str


class FunctionCall(TypedDict):
    """The function an assistant called: its name and arguments (a JSON object, as text or as a mapping)."""

    name: str
    arguments: str | Mapping[str, Any]


class ToolCallDict(TypedDict):
    """A tool call an assistant made: ``{"id", "type": "function", "function": {"name", "arguments"}}``."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class MessageDict(TypedDict, total=False):
    """An OpenAI-style chat message. ``content``: text, a list of text parts, or None (an assistant that only
    called tools); ``tool_calls`` on an assistant's, ``tool_call_id`` on a tool's, ``name`` optional."""

    role: Required[Literal["system", "developer", "user", "assistant", "tool"]]
    content: str | Sequence[TextPart] | None
    name: str
    tool_calls: Sequence[ToolCallDict]
    tool_call_id: str


Message = MessageDict | common_pb2.ChatMessage
"""An OpenAI-style message (MessageDict) or a ChatMessage."""

_KEYS = frozenset(MessageDict.__annotations__)


def chat_message(message: Message, where: str = "message") -> common_pb2.ChatMessage:
    """The ChatMessage of ``message``; FieldError naming the bad key for a shape this client cannot send. The
    gateway checks the rest (ids, lengths) and names the field."""
    if isinstance(message, common_pb2.ChatMessage):
        return message
    if not isinstance(message, Mapping):
        raise FieldError(where, "must be a dict with a role and content, or a ChatMessage")
    for key in message:
        if key not in _KEYS:
            raise FieldError(f"{where}.{key}", f"not a key of a chat message (known: {', '.join(sorted(_KEYS))})")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise FieldError(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    return common_pb2.ChatMessage(
        role=ROLES[role],
        content=_content(message.get("content"), f"{where}.content"),
        name=_text(message, "name", where),
        tool_calls=[_tool_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(_calls(message, where))],
        tool_call_id=_text(message, "tool_call_id", where),
    )


def _calls(message: Mapping[str, Any], where: str) -> Sequence[object]:
    calls = message.get("tool_calls") or ()
    if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence):
        raise FieldError(f"{where}.tool_calls", "must be a list of tool calls")
    return calls


def _text(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key, "")
    if not isinstance(value, str):
        raise FieldError(f"{where}.{key}", f"must be a string, got {type(value).__name__}")
    return value


def _content(content: object, where: str) -> list[common_pb2.ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [common_pb2.ContentPart(text=content)]
    if not isinstance(content, Sequence):
        raise FieldError(where, f"must be a string, a list of text parts or None, got {type(content).__name__}")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") != "text":
            raise FieldError(f"{where}[{j}]", 'must be a text part {"type": "text", "text": "..."}')
        parts.append(common_pb2.ContentPart(text=_text(part, "text", f"{where}[{j}]")))
    return parts


def _tool_call(call: object, where: str) -> common_pb2.ToolCall:
    if not isinstance(call, Mapping) or call.get("type", "function") != "function":
        raise FieldError(where, 'must be {"id", "type": "function", "function": {"name", "arguments"}}')
    function = call.get("function")
    if not isinstance(function, Mapping):
        raise FieldError(f"{where}.function", 'must be {"name", "arguments"}')
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, Mapping):
        arguments = json.dumps(arguments)
    if not isinstance(arguments, str):
        raise FieldError(f"{where}.function.arguments", "must be a JSON object, as text or a dict")
    return common_pb2.ToolCall(
        call_id=_text(call, "id", where), name=_text(function, "name", f"{where}.function"), arguments_json=arguments
    )


ToolSpec = str | Mapping[str, Any] | gateway_pb2.ToolDeclaration | common_pb2.FunctionDeclaration
"""A tool offered to the model: a tools-service tool's name (``"*"``: every one the key may call), OpenAI's
``{"type": "function", "function": {"name", "description", "parameters", "strict"}}`` (a function the caller runs),
genmesh's ``{"type": "genmesh_tool", "name"}``, or the proto."""
ToolChoiceSpec = str | Mapping[str, Any] | common_pb2.ToolChoice
"""``"auto"``, ``"none"``, ``"required"``, ``{"type": "function", "function": {"name"}}``, ``{"type":
"allowed_tools", "allowed_tools": {"mode", "tools"}}`` (OpenAI's), or the proto."""


class RequestOptions(TypedDict, total=False):
    """The keyword arguments of a generation request, all optional:

    - ``collection`` (the retrieval collection; the gateway's default when empty), ``top_k`` (passages),
      ``retrieval`` (False: none), ``retrieval_timeout_ms``;
    - ``tool_calls``: Tools to run before generation, their results in the prompt;
    - ``sampling``: Sampling (None: the server's defaults); ``require_all_stages``: fail instead of degrading;
    - ``request_id``: echoed in logs and traces (a fresh one when empty), the same on every retry;
    - ``tools`` (ToolSpec), ``tool_choice``, ``max_steps``, ``parallel_tool_calls``: the agent loop
      (AsyncClient.generate says how it streams).
    """

    collection: str
    top_k: int | None
    retrieval: bool
    retrieval_timeout_ms: int | None
    tool_calls: Sequence[Tool]
    sampling: Sampling | None
    require_all_stages: bool
    request_id: str
    tools: Sequence[ToolSpec]
    tool_choice: ToolChoiceSpec | None
    max_steps: int | None
    parallel_tool_calls: bool | None


class GenerateOptions(RequestOptions, total=False):
    """RequestOptions and the call's deadline in seconds (None: the client's ``timeout_s``)."""

    timeout_s: float | None


def gateway_request(
    question: str = "", messages: Sequence[Message] = (), **options: Unpack[RequestOptions]
) -> gateway_pb2.GatewayRequest:
    """The GatewayRequest of a question or ``messages`` and RequestOptions; FieldError naming a tool or message
    shape it cannot send; TypeError naming an option it does not know (a typo would otherwise be ignored)."""
    if unknown := options.keys() - RequestOptions.__optional_keys__:
        raise TypeError(f"unexpected keyword argument {', '.join(map(repr, sorted(unknown)))}")
    retrieval = gateway_pb2.RetrievalOptions(
        collection=options.get("collection", ""),
        disabled=not options.get("retrieval", True),
        top_k=options.get("top_k"),
        timeout_ms=options.get("retrieval_timeout_ms"),
    )
    tool_choice = options.get("tool_choice")
    return gateway_pb2.GatewayRequest(
        tools=[_tool(t, f"tools[{i}]") for i, t in enumerate(options.get("tools", ()))],
        tool_choice=None if tool_choice is None else choice_of(tool_choice),
        max_steps=options.get("max_steps"),
        parallel_tool_calls=options.get("parallel_tool_calls"),
        request_id=options.get("request_id", ""),
        question=question,
        messages=[chat_message(m, f"messages[{i}]") for i, m in enumerate(messages)],
        tool_calls=[t.proto() for t in options.get("tool_calls", ())],
        retrieval=retrieval,
        sampling=(options.get("sampling") or Sampling()).proto(),
        require_all_stages=options.get("require_all_stages", False),
    )


def _tool(tool: ToolSpec, where: str) -> gateway_pb2.ToolDeclaration:
    if isinstance(tool, str):
        return gateway_pb2.ToolDeclaration(server_tool=tool)
    return tool_declaration(tool, where)
