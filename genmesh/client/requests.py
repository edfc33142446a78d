"""GatewayRequests from the client's keyword arguments. The gateway validates them (bad input comes back as
BadRequest naming the field); this module only builds the messages."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """Sampling parameters; None leaves a parameter to the server's documented default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None

    def proto(self) -> common_pb2.SamplingParams:
        params = common_pb2.SamplingParams(stop=list(self.stop))
        for name in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"):
            value = getattr(self, name)
            if value is not None:
                setattr(params, name, value)
        return params


Message = Mapping[str, str] | common_pb2.ChatMessage
"""An OpenAI-style ``{"role": "user", "content": "..."}`` or a ChatMessage."""


def chat_message(message: Message) -> common_pb2.ChatMessage:
    if isinstance(message, common_pb2.ChatMessage):
        return message
    role = ROLES.get(message.get("role", ""), common_pb2.ROLE_UNSPECIFIED)  # the gateway names a bad role
    part = common_pb2.ContentPart(text=message.get("content", ""))
    return common_pb2.ChatMessage(
        role=role, content=[part], name=message.get("name", ""), tool_call_id=message.get("tool_call_id", "")
    )


def gateway_request(
    question: str = "",
    messages: Sequence[Message] = (),
    *,
    collection: str = "",
    top_k: int | None = None,
    retrieval: bool = True,
    retrieval_timeout_ms: int | None = None,
    tool_calls: Sequence[Tool] = (),
    sampling: Sampling | None = None,
    require_all_stages: bool = False,
    request_id: str = "",
) -> gateway_pb2.GatewayRequest:
    """The GatewayRequest of Client.generate's arguments."""
    options = gateway_pb2.RetrievalOptions(collection=collection, disabled=not retrieval)
    if top_k is not None:
        options.top_k = top_k
    if retrieval_timeout_ms is not None:
        options.timeout_ms = retrieval_timeout_ms
    return gateway_pb2.GatewayRequest(
        request_id=request_id,
        question=question,
        messages=[chat_message(m) for m in messages],
        tool_calls=[t.proto() for t in tool_calls],
        retrieval=options,
        sampling=(sampling or Sampling()).proto(),
        require_all_stages=require_all_stages,
    )
