"""The agent loop over real in-process upstreams whose inference is scripted to make tool calls: call ids and
executors, the checked calls run through InvokeMany, rejected ones answered with errors the model sees, the
conversation growing by a prefix, tool_choice NONE on the last step, client functions ending the stream, usage
summed and per-step timings."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from inprocess import Fault, ScriptedMesh, ScriptedTool, start_scripted_mesh

from gateway.orchestrator import Orchestrator
from gateway.upstreams import Upstreams
from genmesh.errors import DeadlineExceeded, FailedPrecondition, GenmeshError, InvalidArgument, Unavailable
from genmesh.messages import message_text
from genmesh.v1 import common_pb2, gateway_pb2

Call = common_pb2.ToolCall
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")
SCHEMA: dict[str, object] = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}
TOOL_CALLS = common_pb2.FINISH_REASON_TOOL_CALLS
ANSWER = "Generators yield values."


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedMesh]:
    running = await start_scripted_mesh(
        ScriptedTool("lookup", result_json='{"value": 42}', idempotent=True, schema=SCHEMA),
        ScriptedTool("broken", error=Fault(grpc.StatusCode.INTERNAL, "tool blew up")),
        ScriptedTool("picky", error=Fault(grpc.StatusCode.INVALID_ARGUMENT, "arguments_json.x: too big")),
    )
    yield running
    await running.stop()


@pytest.fixture
async def gateway(scripted: ScriptedMesh) -> AsyncIterator[Orchestrator]:
    upstreams = Upstreams(scripted.targets())
    yield Orchestrator(upstreams)
    await upstreams.close()


def agent_request(*servers: str, functions: tuple[str, ...] = (), max_steps: int = 4) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(
        question="What is under key a?", retrieval=gateway_pb2.RetrievalOptions(disabled=True), max_steps=max_steps
    )
    request.tools.extend(gateway_pb2.ToolDeclaration(server_tool=name) for name in servers)
    for name in functions:
        function = common_pb2.FunctionDeclaration(name=name, description="Client side.")
        request.tools.append(gateway_pb2.ToolDeclaration(function=function))
    request.tool_choice.mode = common_pb2.TOOL_CHOICE_MODE_REQUIRED
    return request


async def events_of(gateway: Orchestrator, request: gateway_pb2.GatewayRequest) -> list[gateway_pb2.GatewayEvent]:
    return [event async for event in gateway.answer(request, 10.0)]


def violated(status: status_pb2.Status) -> list[str]:
    """The fields a status's BadRequest detail names."""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.field for v in bad.field_violations]
    return []


def kinds(events: list[gateway_pb2.GatewayEvent]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


async def test_calls_run_and_their_results_feed_the_next_step(scripted: ScriptedMesh, gateway: Orchestrator) -> None:
    scripted.inference.tool_calls = [
        [Call(name="lookup", arguments_json='{"key": "a"}'), Call(name="lookup", arguments_json='{"key": "b"}')]
    ]
    events = await events_of(gateway, agent_request("lookup", max_steps=2))

    assert kinds(events) == ["delta"] * 3 + ["tool_call"] * 2 + ["step_end"] + ["tool_result"] * 2 + ["delta"] * 3 + [
        "step_end",
        "complete",
    ]
    calls = [e.tool_call for e in events if e.HasField("tool_call")]
    assert all(CALL_ID.fullmatch(c.call.call_id) for c in calls) and calls[0].call.call_id != calls[1].call.call_id
    assert {(c.step, c.executor) for c in calls} == {(1, gateway_pb2.TOOL_EXECUTOR_GATEWAY)}
    (invoked,) = scripted.tools.invocations
    assert [(c.call_id, c.arguments_json) for c in invoked.calls] == [
        (c.call.call_id, c.call.arguments_json) for c in calls
    ]
    ends = [e.step_end for e in events if e.HasField("step_end")]
    assert [(s.step, s.finish_reason) for s in ends] == [(1, TOOL_CALLS), (2, common_pb2.FINISH_REASON_STOP)]

    first, second = scripted.inference.requests
    assert [t.name for t in first.tools] == ["lookup"] and json.loads(first.tools[0].parameters_json_schema) == SCHEMA
    assert first.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert second.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_NONE, "the last step answers"
    assert list(second.messages[: len(first.messages)]) == list(first.messages), "the prompt keeps its prefix"
    assistant, *results = second.messages[len(first.messages) :]
    assert assistant.role == common_pb2.ROLE_ASSISTANT and message_text(assistant) == ANSWER
    assert [c.call_id for c in assistant.tool_calls] == [c.call.call_id for c in calls]
    assert [(m.role, m.tool_call_id, message_text(m)) for m in results] == [
        (common_pb2.ROLE_TOOL, c.call.call_id, '{"value": 42}') for c in calls
    ]

    completion = events[-1].complete
    assert completion.finish_reason == common_pb2.FINISH_REASON_STOP
    assert completion.usage.completion_tokens == sum(s.usage.completion_tokens for s in ends) == 6
    assert completion.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in ends)
    spans = {(s.stage, s.step, s.call_id) for s in completion.timings.stages}
    assert spans == {("inference", 1, ""), ("inference", 2, "")} | {
        (f"tool:{c.call.call_id}", 1, c.call.call_id) for c in calls
    }


async def test_a_call_the_model_got_wrong_is_an_error_result_it_reads(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    scripted.inference.tool_calls = [
        [
            Call(name="teleport", arguments_json="{}"),
            Call(name="lookup", arguments_json='{"key": 5}'),
            Call(name="lookup", arguments_json='{"key": "a"'),
        ]
    ]
    events = await events_of(gateway, agent_request("lookup", max_steps=2))

    assert scripted.tools.invocations == [], "a rejected call never reaches the tools service"
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    fields = [violated(r.error.status) for r in results]
    assert all(r.error.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for r in results)
    assert fields == [["name"], ["arguments_json.key"], ["arguments_json"]], fields
    assert len([e for e in events if e.HasField("degraded")]) == 3
    assert len(events[-1].complete.degraded) == 3
    second = scripted.inference.requests[1]
    contents = [json.loads(message_text(m)) for m in second.messages if m.role == common_pb2.ROLE_TOOL]
    assert [c["error"]["code"] for c in contents] == ["INVALID_ARGUMENT"] * 3
    assert "teleport" in contents[0]["error"]["message"]
    assistant = next(m for m in second.messages if m.role == common_pb2.ROLE_ASSISTANT)
    assert [c.arguments_json for c in assistant.tool_calls] == ["{}", '{"key": 5}', "{}"]


@pytest.mark.parametrize("tool", ["lookup", "picky"])
async def test_with_require_all_stages_the_model_s_mistake_fails_the_request_as_a_failed_precondition(
    scripted: ScriptedMesh, gateway: Orchestrator, tool: str
) -> None:
    """Rejected by the gateway (lookup without its key) or by the tool (picky): the client sent no such field."""
    scripted.inference.tool_calls = [[Call(name=tool, arguments_json="{}")]]
    request = agent_request(tool)
    request.require_all_stages = True
    with pytest.raises(FailedPrecondition, match=r"^tool:call_[A-Za-z0-9]{24} failed: .*arguments_json\.") as failed:
        await events_of(gateway, request)
    assert not isinstance(failed.value, InvalidArgument)


async def test_a_step_ending_without_a_completion_fails_the_request(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    scripted.inference.tool_calls = [[Call(name="lookup", arguments_json='{"key": "a"}')]]
    scripted.inference.incomplete = {2}
    seen: list[gateway_pb2.GatewayEvent] = []
    with pytest.raises(Unavailable, match="inference ended step 2 without a completion"):
        async for event in gateway.answer(agent_request("lookup"), 10.0):
            seen.append(event)
    assert [e.step_end.step for e in seen if e.HasField("step_end")] == [1], "step 1's usage is not counted twice"
    assert not any(e.HasField("complete") for e in seen)


async def test_queue_time_is_summed_over_the_steps_and_every_call_has_a_span(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    scripted.inference.queue_ms = 2.5
    scripted.inference.tool_calls = [
        [Call(name="clock", arguments_json="{}"), Call(name="teleport"), Call(name="lookup", arguments_json="{}")]
    ]
    events = await events_of(gateway, agent_request("lookup", functions=("clock",)))
    calls = [e.tool_call.call.call_id for e in events if e.HasField("tool_call")]
    timings = events[-1].complete.timings
    assert timings.queue_ms == 2.5
    spans = {s.call_id: s for s in timings.stages if s.call_id}
    assert sorted(spans) == sorted(calls), "rejected and client calls have their span too"
    for call_id in calls:
        assert spans[call_id].step == 1 and spans[call_id].stage == f"tool:{call_id}"
        assert spans[call_id].start_ms == spans[call_id].end_ms, "none of them ran on the gateway"
    assert timings.tools_ms == 0.0

    scripted.inference.requests.clear()  # Generate calls are numbered from the first again
    scripted.inference.tool_calls = [[Call(name="lookup", arguments_json='{"key": "a"}')]] * 2
    events = await events_of(gateway, agent_request("lookup", max_steps=3))
    timings = events[-1].complete.timings
    assert timings.queue_ms == 3 * 2.5
    ran = sorted((s.start_ms, s.end_ms) for s in timings.stages if s.call_id)
    assert len(ran) == 2 and ran[0][1] <= ran[1][0], "one call a step, the steps one after the other"
    assert timings.tools_ms == pytest.approx(sum(end - start for start, end in ran)), "step 2's generation is no tool's"
    assert timings.tools_ms < ran[1][1] - ran[0][0]


async def test_a_star_lists_the_tools_once_within_the_cache_s_lifetime(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    await asyncio.gather(*(events_of(gateway, agent_request("*")) for _ in range(4)))
    await events_of(gateway, agent_request("*"))
    assert scripted.tools.listings == 1, "concurrent requests share one listing, later ones the cached one"


async def test_inference_s_refusal_of_a_declaration_names_the_request_s_tool(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    """ "*" became three declarations (broken, lookup, picky) before the function: inference's tools[3] is the
    request's tools[1]; a server tool's declaration refused is not the client's mistake."""
    refusal = InvalidArgument.field("tools[3].parameters_json_schema", "unsupported keyword")
    scripted.inference.fault = Fault(grpc.StatusCode.INVALID_ARGUMENT, rich=refusal)
    with pytest.raises(InvalidArgument) as refused:
        await events_of(gateway, agent_request("*", functions=("clock",)))
    assert [v.field for v in refused.value.violations] == ["tools[1].function.parameters_json_schema"]

    refusal = InvalidArgument.field("tools[1].parameters_json_schema", "unsupported keyword")
    scripted.inference.fault = Fault(grpc.StatusCode.INVALID_ARGUMENT, rich=refusal)
    with pytest.raises(FailedPrecondition, match="'lookup'"):
        await events_of(gateway, agent_request("*", functions=("clock",)))


async def test_a_failing_tool_is_an_error_result_and_the_loop_goes_on(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    scripted.inference.tool_calls = [[Call(name="broken", arguments_json="{}")]]
    events = await events_of(gateway, agent_request("broken", max_steps=3))
    (result,) = [e.tool_result for e in events if e.HasField("tool_result")]
    assert result.error.status.code == grpc.StatusCode.INTERNAL.value[0]
    assert [e.step_end.step for e in events if e.HasField("step_end")] == [1, 2]
    assert events[-1].complete.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_a_call_the_tools_service_refuses_is_the_model_s_error_not_the_request_s(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    scripted.inference.tool_calls = [[Call(name="picky", arguments_json="{}")]]
    events = await events_of(gateway, agent_request("picky", max_steps=2))
    (result,) = [e.tool_result for e in events if e.HasField("tool_result")]
    assert result.error.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert kinds(events)[-2:] == ["step_end", "complete"]


async def test_a_client_function_call_ends_the_stream_after_the_server_calls(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    scripted.inference.tool_calls = [
        [Call(name="clock", arguments_json="{}"), Call(name="lookup", arguments_json='{"key": "a"}')]
    ]
    events = await events_of(gateway, agent_request("lookup", functions=("clock",)))
    assert kinds(events)[-4:] == ["tool_call", "step_end", "tool_result", "complete"]
    executors = [e.tool_call.executor for e in events if e.HasField("tool_call")]
    assert executors == [gateway_pb2.TOOL_EXECUTOR_CLIENT, gateway_pb2.TOOL_EXECUTOR_GATEWAY]
    assert events[-1].complete.finish_reason == TOOL_CALLS
    assert len(scripted.inference.requests) == 1


async def test_max_steps_ends_the_loop_with_an_answer(scripted: ScriptedMesh, gateway: Orchestrator) -> None:
    scripted.inference.tool_calls = [[Call(name="lookup", arguments_json='{"key": "a"}')]] * 2
    events = await events_of(gateway, agent_request("lookup", max_steps=3))
    modes = [r.tool_choice.mode for r in scripted.inference.requests]
    assert modes == [common_pb2.TOOL_CHOICE_MODE_REQUIRED] * 2 + [common_pb2.TOOL_CHOICE_MODE_NONE]
    assert [e.step_end.finish_reason for e in events if e.HasField("step_end")] == [TOOL_CALLS] * 2 + [
        common_pb2.FINISH_REASON_STOP
    ]


async def test_a_step_without_calls_ends_the_loop(scripted: ScriptedMesh, gateway: Orchestrator) -> None:
    events = await events_of(gateway, agent_request("lookup"))
    assert kinds(events) == ["delta"] * 3 + ["step_end", "complete"]
    assert len(scripted.inference.requests) == 1


async def test_unknown_server_tools_are_refused_naming_the_field(gateway: Orchestrator) -> None:
    with pytest.raises(GenmeshError) as refused:
        await events_of(gateway, agent_request("lookup", "nope"))
    assert isinstance(refused.value, InvalidArgument)
    assert [v.field for v in refused.value.violations] == ["tools[1].server_tool"]


async def test_every_tool_of_the_service_with_a_star(scripted: ScriptedMesh, gateway: Orchestrator) -> None:
    await events_of(gateway, agent_request("*"))
    assert sorted(t.name for t in scripted.inference.requests[0].tools) == ["broken", "lookup", "picky"]


async def test_a_deadline_passing_mid_loop_ends_the_stream_after_the_earlier_steps_events(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    scripted.inference.delta_delay_s = 0.2  # a step takes 0.6 s: the deadline passes within step 2
    scripted.inference.tool_calls = [[Call(name="lookup", arguments_json='{"key": "a"}')]]
    seen: list[str] = []
    with pytest.raises(DeadlineExceeded):
        async for event in gateway.answer(agent_request("lookup"), 1.0):
            seen.append(str(event.WhichOneof("event")))
    assert seen[:7] == ["delta"] * 3 + ["tool_call", "step_end", "tool_result", "delta"], seen
    assert seen.count("step_end") == 1 and "complete" not in seen


async def test_the_request_s_own_failed_call_reaches_the_prompt_as_the_loop_s_do(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    request = gateway_pb2.GatewayRequest(question="Go?", retrieval=gateway_pb2.RetrievalOptions(disabled=True))
    request.tool_calls.add(name="broken", arguments_json="{}")
    await events_of(gateway, request)
    assert '{"error": {"code": "INTERNAL", "message": "tool blew up"}}' in scripted.inference.prompts[0]
