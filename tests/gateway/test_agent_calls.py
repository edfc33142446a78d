"""The agent loop's pure parts: call ids, the check of a model's call against the tools, the messages that carry
calls and results back to the model, and a job's result gathered from a loop's events."""

from __future__ import annotations

import json
import re

import grpc

from gateway.agent.calls import (
    check_call,
    new_call_id,
    rejected,
)
from gateway.agent.plan import AgentTool
from gateway.jobs.result import ResultCollector
from genmesh.messages import MAX_MESSAGE_CHARS, message_text, message_violations
from genmesh.status import status_message
from genmesh.tool_messages import UNREADABLE_NAME
from genmesh.tool_messages import assistant_turn as assistant_message
from genmesh.tool_messages import tool_result_content as result_text
from genmesh.v1 import common_pb2, gateway_pb2

SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = {
    "weather": AgentTool(common_pb2.FunctionDeclaration(name="weather"), SCHEMA, server=True),
    "ask_user": AgentTool(common_pb2.FunctionDeclaration(name="ask_user"), {"type": "object"}, server=False),
}
Call = common_pb2.ToolCall


def mistake_fields(call: Call, allowed: tuple[str, ...] = ()) -> list[str]:
    checked = check_call(call, TOOLS, allowed)
    return [] if checked.mistake is None else [v.field for v in checked.mistake.violations]


def test_call_ids_are_call_and_24_letters_or_digits_each_new() -> None:
    ids = {new_call_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)


def test_a_call_is_checked_against_its_tool_s_schema() -> None:
    assert mistake_fields(Call(name="weather", arguments_json='{"city": "Paris"}')) == []
    assert mistake_fields(Call(name="ask_user", arguments_json="")) == [], "empty arguments are {}"
    assert mistake_fields(Call(name="teleport", arguments_json="{}")) == ["name"]
    assert mistake_fields(Call(name="", arguments_json="{}")) == ["name"]
    assert mistake_fields(Call(name="weather", arguments_json='{"city": "Oslo", "days": 0}')) == [
        "arguments_json.city",
        "arguments_json.days",
    ]
    assert mistake_fields(Call(name="weather", arguments_json="{}")) == ["arguments_json.city"]
    assert mistake_fields(Call(name="weather", arguments_json='{"city": "Rome", "x": 1}')) == ["arguments_json.x"]
    assert mistake_fields(Call(name="weather", arguments_json='<tool_call>{"city"')) == ["arguments_json"]
    assert mistake_fields(Call(name="weather", arguments_json="[1]")) == ["arguments_json"]
    assert mistake_fields(Call(name="weather", arguments_json='{"city": "Rome"}'), ("ask_user",)) == ["name"]


def test_executors_client_only_for_a_valid_function_call() -> None:
    assert check_call(Call(name="ask_user"), TOOLS).executor == gateway_pb2.TOOL_EXECUTOR_CLIENT
    assert check_call(Call(name="ask_user", arguments_json="[]"), TOOLS).executor == gateway_pb2.TOOL_EXECUTOR_GATEWAY
    assert check_call(Call(name="weather"), TOOLS).executor == gateway_pb2.TOOL_EXECUTOR_GATEWAY


def test_a_rejected_call_has_an_invalid_argument_result_and_a_degraded_event() -> None:
    call = Call(call_id="call_x", name="weather", arguments_json='{"city": 3}')
    result, degraded = rejected(check_call(call, TOOLS))
    assert result.tool_result.call_id == "call_x" and result.tool_result.name == "weather"
    assert result.tool_result.error.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert degraded.degraded.stage == "tool:call_x"
    error = json.loads(result_text(result.tool_result))["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "arguments_json.city" in error["message"]


def test_the_assistant_turn_stays_a_valid_message_whatever_the_model_wrote() -> None:
    calls = [
        Call(call_id="call_a", name="weather", arguments_json='{"city": "Rome"}'),
        Call(call_id="call_b", name="", arguments_json="not json"),
    ]
    message = assistant_message("", calls)
    assert message_violations([message]) == []
    assert [(c.name, c.arguments_json) for c in message.tool_calls] == [
        ("weather", '{"city": "Rome"}'),
        (UNREADABLE_NAME, "{}"),
    ]
    assert message_text(assistant_message("Let me look.", calls)) == "Let me look."


def test_a_result_the_model_reads_is_its_json_or_its_error_cut_to_one_message() -> None:
    assert result_text(common_pb2.ToolResult(result_json='{"v": 1}')) == '{"v": 1}'
    failed = common_pb2.ToolResult(
        error=common_pb2.ToolError(status=status_message(grpc.StatusCode.DEADLINE_EXCEEDED, "too slow"))
    )
    assert json.loads(result_text(failed)) == {"error": {"code": "DEADLINE_EXCEEDED", "message": "too slow"}}
    huge = result_text(common_pb2.ToolResult(result_json='"' + "x" * 2 * MAX_MESSAGE_CHARS + '"'))
    assert len(huge) == MAX_MESSAGE_CHARS and huge.endswith("[cut]")


def event(**fields: object) -> gateway_pb2.GatewayEvent:
    return gateway_pb2.GatewayEvent(**fields)  # type: ignore[arg-type]


def test_a_job_s_result_holds_the_loop_s_messages_and_steps() -> None:
    collector = ResultCollector()
    first, second = Call(call_id="call_1", name="weather", arguments_json="{}"), Call(call_id="call_2", name="nap")
    usage = common_pb2.Usage(prompt_tokens=5, completion_tokens=2)
    stream = [
        event(delta=common_pb2.TokenDelta(text="Checking.")),
        event(tool_call=gateway_pb2.ToolCallEvent(step=1, call=first)),
        event(tool_call=gateway_pb2.ToolCallEvent(step=1, call=second)),
        event(step_end=gateway_pb2.StepEnd(step=1, finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS, usage=usage)),
        event(tool_result=common_pb2.ToolResult(call_id="call_2", name="nap", result_json='{"slept": 1}')),
        event(tool_result=common_pb2.ToolResult(call_id="call_1", name="weather", result_json='{"c": 21}')),
        event(delta=common_pb2.TokenDelta(text="Sunny.")),
        event(step_end=gateway_pb2.StepEnd(step=2, finish_reason=common_pb2.FINISH_REASON_STOP, usage=usage)),
        event(complete=common_pb2.Completion(finish_reason=common_pb2.FINISH_REASON_STOP)),
    ]
    for each in stream:
        collector.add(each)
    result = collector.result()
    assert [s.step for s in result.steps] == [1, 2]
    roles = [(m.role, message_text(m), m.tool_call_id) for m in result.output_messages]
    assert roles == [
        (common_pb2.ROLE_ASSISTANT, "Checking.", ""),
        (common_pb2.ROLE_TOOL, '{"c": 21}', "call_1"),
        (common_pb2.ROLE_TOOL, '{"slept": 1}', "call_2"),
        (common_pb2.ROLE_ASSISTANT, "Sunny.", ""),
    ], "tool messages in call order, the final answer last"
    assert [c.call_id for c in result.output_messages[0].tool_calls] == ["call_1", "call_2"]
    assert result.answer == "Checking.Sunny." and len(result.tool_results) == 2
    assert message_violations(list(result.output_messages)) == []
