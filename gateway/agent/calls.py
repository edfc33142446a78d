"""The model's tool calls in the agent loop: their ids, their check against the request's tools, and the messages
that carry them (and their results) back to the model.

A call the model got wrong (an unknown tool, arguments that are not a JSON object or fail the tool's schema) is
never sent to the tools service: it gets an error result naming the field (``arguments_json.x``), which the
model reads on the next step.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.agent.plan import AgentTool
from gateway.request import ToolCallPlan
from gateway.stages.tools import failed_call
from genmesh.errors import InvalidArgument, quote
from genmesh.schema import validate_arguments
from genmesh.status import status_code_of, status_of
from genmesh.v1 import common_pb2, gateway_pb2

CALL_ID_PREFIX = "call_"
CALL_ID_CHARS = 24
_ALPHABET = string.ascii_letters + string.digits
"""The name an assistant message gives a call whose name the parser could not read (a message needs one)."""


def new_call_id() -> str:
    """``call_`` and 24 random letters and digits."""
    return CALL_ID_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(CALL_ID_CHARS))


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One call the model made, with its id, and what is wrong with it (None: it may run)."""

    call: common_pb2.ToolCall
    tool: AgentTool | None
    mistake: InvalidArgument | None

    @property
    def by_client(self) -> bool:
        """A valid call of a client function: the client runs it."""
        return self.mistake is None and self.tool is not None and not self.tool.server

    @property
    def executor(self) -> gateway_pb2.ToolExecutor.ValueType:
        return gateway_pb2.TOOL_EXECUTOR_CLIENT if self.by_client else gateway_pb2.TOOL_EXECUTOR_GATEWAY


def check_call(call: common_pb2.ToolCall, tools: Mapping[str, AgentTool], allowed: Sequence[str] = ()) -> ModelCall:
    """``call`` (its id already set) checked against the request's ``tools`` (and tool_choice's ``allowed``)."""
    tool = tools.get(call.name)
    if tool is None:
        known = ", ".join(list(tools)[:32])
        return ModelCall(call, None, InvalidArgument.field("name", f"unknown tool {quote(call.name)} (known: {known})"))
    if allowed and call.name not in allowed:
        return ModelCall(call, tool, InvalidArgument.field("name", f"{quote(call.name)} may not be called now"))
    try:
        validate_arguments(tool.schema, call.arguments_json, "arguments_json")
    except InvalidArgument as mistake:
        return ModelCall(call, tool, mistake)
    return ModelCall(call, tool, None)


def call_plan(index: int, call: common_pb2.ToolCall) -> ToolCallPlan:
    """A checked server call as the tool stage runs it (its timeout: the tool's own)."""
    return ToolCallPlan(index, call.call_id, call.name, call.arguments_json or "{}", None)


def rejected(model_call: ModelCall) -> tuple[gateway_pb2.GatewayEvent, gateway_pb2.GatewayEvent]:
    """The error ToolResult of a call the model got wrong (INVALID_ARGUMENT naming the field) and its Degraded."""
    mistake = model_call.mistake
    assert mistake is not None
    status = status_of(mistake)
    reported = common_pb2.ToolError(code=status.code, message=status.message, status=status)
    plan = call_plan(0, model_call.call)
    return failed_call(plan, status_code_of(mistake), status.message, 0.0, reported)
