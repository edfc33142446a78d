"""Tools through the Python client: its arguments as the GatewayRequest's (a bad shape is a FieldError naming the
key), the agent loop's events typed (ToolCall, StepEnd) and added up in the Answer with the messages that continue
the conversation, then client-side execution through gRPC against a gateway over the real inference service (the
shipped model) and tools service (support.agent_tools): tool_choice required gives a call whose arguments validate
and finish reason ``tool_calls``; the test runs it, sends the continuation and tool messages back, and the model
answers; a step mixing a server tool and a client function continues with the server call and its result, as a
stream and as a job. Async and blocking."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
from support.agents_mesh import AgentsMesh, agents_mesh

from genmesh.client import (
    AsyncClient,
    BadRequest,
    Client,
    Complete,
    Delta,
    Sampling,
    StepEnd,
    ToolCall,
    Usage,
)
from genmesh.client.errors import FieldError
from genmesh.client.events import Answer, answer_of, event_of
from genmesh.client.requests import MessageDict, gateway_request
from genmesh.errors import InvalidArgument
from genmesh.status import status_of
from genmesh.v1 import common_pb2, gateway_pb2

PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 12}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMETERS}}
QUESTION: list[MessageDict] = [{"role": "user", "content": "What is the weather in Paris?"}]
CALLS = Sampling(max_tokens=120, temperature=0)


def test_tool_arguments_map_to_the_gateway_request() -> None:
    request = gateway_request(
        "q",
        tools=["calculator", "*", WEATHER, {"type": "genmesh_tool", "name": "web_search"}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_steps=5,
        parallel_tool_calls=False,
    )
    kinds = [t.WhichOneof("kind") for t in request.tools]
    assert kinds == ["server_tool", "server_tool", "function", "server_tool"]
    assert [request.tools[i].server_tool for i in (0, 1, 3)] == ["calculator", "*", "web_search"]
    assert json.loads(request.tools[2].function.parameters_json_schema) == PARAMETERS
    assert request.tool_choice.tool_name == "get_weather" and request.max_steps == 5
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    plain = gateway_request("q")
    assert not any(plain.HasField(f) for f in ("tool_choice", "max_steps", "parallel_tool_calls"))
    assert gateway_request("q", tools=["x"], tool_choice="none").tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_NONE


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"tools": [{"name": "f", "parameters": {}}]}, "tools[0].type"),
        ({"tools": ["a", {"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
         "tools[1].function.parameters"),
        ({"tool_choice": "any"}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.function"),
    ],
)  # fmt: skip
def test_a_tool_shape_the_client_cannot_send_names_its_key(options: dict[str, Any], named: str) -> None:
    with pytest.raises(FieldError) as raised:
        gateway_request("q", **options)
    assert raised.value.path == named, raised.value


def _call(
    step: int, call_id: str, name: str, arguments: str, executor: gateway_pb2.ToolExecutor.ValueType
) -> gateway_pb2.GatewayEvent:
    call = common_pb2.ToolCall(call_id=call_id, name=name, arguments_json=arguments)
    return gateway_pb2.GatewayEvent(tool_call=gateway_pb2.ToolCallEvent(step=step, call=call, executor=executor))


def test_loop_events_are_typed_and_the_answer_continues_with_every_step() -> None:
    usage = common_pb2.Usage(prompt_tokens=20, completion_tokens=7, cached_tokens=16)
    mistake = status_of(InvalidArgument.field("name", "unknown tool"))
    protos = [
        gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text="First. ")),
        _call(1, "call_s", "weather", '{"city": "Rome"}', gateway_pb2.TOOL_EXECUTOR_GATEWAY),
        _call(1, "call_r", "no such tool", '{"cut', gateway_pb2.TOOL_EXECUTOR_GATEWAY),
        gateway_pb2.GatewayEvent(
            step_end=gateway_pb2.StepEnd(step=1, finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS, usage=usage)
        ),
        gateway_pb2.GatewayEvent(
            tool_result=common_pb2.ToolResult(
                call_id="call_r", name="no such tool", error=common_pb2.ToolError(status=mistake)
            )
        ),
        gateway_pb2.GatewayEvent(tool_result=common_pb2.ToolResult(call_id="call_s", result_json='{"celsius": 21}')),
        gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text="Then.")),
        _call(2, "call_s2", "weather", "{}", gateway_pb2.TOOL_EXECUTOR_GATEWAY),
        _call(2, "call_x", "get_weather", '{"city": "Oslo"}', gateway_pb2.TOOL_EXECUTOR_CLIENT),
        gateway_pb2.GatewayEvent(
            step_end=gateway_pb2.StepEnd(step=2, finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS, usage=usage)
        ),
        gateway_pb2.GatewayEvent(tool_result=common_pb2.ToolResult(call_id="call_s2", result_json='{"celsius": 9}')),
        gateway_pb2.GatewayEvent(
            complete=common_pb2.Completion(finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS, usage=usage)
        ),
    ]
    events = [e for e in map(event_of, protos) if e is not None]
    called, ended = events[8], events[9]
    assert called == ToolCall(2, "call_x", "get_weather", '{"city": "Oslo"}', "client")
    assert isinstance(called, ToolCall) and called.arguments == {"city": "Oslo"}
    assert ended == StepEnd(2, "tool_calls", Usage(20, 7, 16))
    answer = answer_of(events)
    assert (answer.text, answer.finish_reason, [s.step for s in answer.steps]) == ("First. Then.", "tool_calls", [1, 2])
    assert answer.last_step_text == "Then." and [c.call_id for c in answer.client_calls] == ["call_x"]

    def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}

    error = {"error": {"code": "INVALID_ARGUMENT", "message": "name: unknown tool"}}
    assert answer.continuation_messages() == [
        {"role": "assistant", "content": "First. ", "tool_calls": [
            call("call_s", "weather", '{"city": "Rome"}'), call("call_r", "unknown_tool", "{}")]},
        {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_s"},
        {"role": "tool", "content": json.dumps(error), "tool_call_id": "call_r"},
        {"role": "assistant", "content": "Then.", "tool_calls": [
            call("call_s2", "weather", "{}"), call("call_x", "get_weather", '{"city": "Oslo"}')]},
        {"role": "tool", "content": '{"celsius": 9}', "tool_call_id": "call_s2"},
    ]  # fmt: skip
    assert answer.continuation_messages() is not answer.output_messages
    gateway_request(messages=[*QUESTION, *answer.continuation_messages()])  # a shape the client sends


@pytest_asyncio.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AgentsMesh]:
    async with agents_mesh(tmp_path_factory.mktemp("client-tools")) as parts:
        yield parts


def weather(call: ToolCall) -> str:
    jsonschema.validate(call.arguments, PARAMETERS)
    return json.dumps({"city": call.arguments["city"], "temperature_c": 21})


async def test_client_side_execution_round_trip_over_grpc(mesh: AgentsMesh) -> None:
    async with AsyncClient(mesh.gateway) as client:
        events = [
            e
            async for e in client.generate(
                messages=QUESTION, retrieval=False, sampling=CALLS, tools=[WEATHER], tool_choice="required",
                parallel_tool_calls=False,
            )
        ]  # fmt: skip
        kinds = [type(e).__name__ for e in events]
        assert kinds[-3:] == ["ToolCall", "StepEnd", "Complete"], kinds
        answer = answer_of(events)
        assert answer.finish_reason == "tool_calls" and answer.usage.completion_tokens > 0
        (call,) = answer.client_calls
        assert (call.step, call.name, call.executor) == (1, "get_weather", "client")
        assert call.call_id.startswith("call_") and len(call.call_id) == 29
        assert answer.steps == [StepEnd(1, "tool_calls", answer.usage)]
        assert answer.continuation_messages() == [{"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
        ]}]  # fmt: skip
        result: MessageDict = {"role": "tool", "tool_call_id": call.call_id, "content": weather(call)}
        final = await client.answer(
            messages=[*QUESTION, *answer.continuation_messages(), result],
            retrieval=False, sampling=Sampling(max_tokens=16, temperature=0), tools=[WEATHER], tool_choice="none",
        )  # fmt: skip
    assert final.finish_reason in ("stop", "length") and final.text and not final.tool_calls


async def test_the_blocking_client_runs_the_same_loop_and_a_bad_choice_names_the_field(mesh: AgentsMesh) -> None:
    def blocking() -> tuple[list[Any], BadRequest]:
        with Client(mesh.gateway) as client:
            events = list(
                client.generate(
                    messages=QUESTION, retrieval=False, sampling=CALLS, tools=[WEATHER],
                    tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False,
                )
            )  # fmt: skip
            with pytest.raises(BadRequest) as refused:
                client.answer("q", retrieval=False, tools=[WEATHER], tool_choice={
                    "type": "function", "function": {"name": "get_time"}})  # fmt: skip
        return events, refused.value

    events, refused = await asyncio.to_thread(blocking)
    assert [e.name for e in events if isinstance(e, ToolCall)] == ["get_weather"]
    assert isinstance(events[-1], Complete) and events[-1].finish_reason == "tool_calls"
    assert not [e for e in events if isinstance(e, Delta) and e.text]  # the call's text is withheld
    assert [v.field for v in refused.field_violations] == ["tool_choice.tool_name"]


BOOK: dict[str, Any] = {"type": "function", "function": {"name": "book_table", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}  # fmt: skip
MIXED: list[MessageDict] = [{"role": "user", "content": "What is the weather in Paris? Book a table there."}]
SEEDS = 16
"""Seeds tried for a step that calls both the server tool and the client function (most do, at temperature 1)."""


async def mixed_answer(client: AsyncClient) -> tuple[Answer, int]:
    """An answer whose one step calls ``weather`` (the gateway runs it) and ``book_table`` (the client's), with the
    seed that gave it."""
    for seed in range(SEEDS):
        answer = await client.answer(
            messages=MIXED, retrieval=False, sampling=Sampling(max_tokens=120, temperature=1.0, seed=seed),
            tools=["weather", BOOK], tool_choice="required", max_steps=3,
        )  # fmt: skip
        executors = {(c.name, c.executor) for c in answer.tool_calls}
        if {("weather", "gateway"), ("book_table", "client")} <= executors and len(answer.steps) == 1:
            return answer, seed
    raise AssertionError(f"no seed of {SEEDS} made a step calling both tools")


def check_continuation(answer: Answer) -> list[MessageDict]:
    """The continuation holds the step's every call and the gateway's results; the client's results appended."""
    turn, *results = answer.continuation_messages()
    assert turn["role"] == "assistant"
    assert [c["id"] for c in turn.get("tool_calls", ())] == [c.call_id for c in answer.tool_calls]
    server = [c.call_id for c in answer.tool_calls if c.executor == "gateway"]
    assert [(m["role"], m.get("tool_call_id")) for m in results] == [("tool", i) for i in server]
    contents = {r.call_id: r.content for r in answer.tool_results}
    assert all(m.get("content") == contents[m.get("tool_call_id", "")] for m in results)
    weather_ids = {c.call_id for c in answer.tool_calls if c.name == "weather"}
    assert any(json.loads(contents[i]).get("celsius") == 21 for i in weather_ids)
    booked = [MessageDict(role="tool", tool_call_id=c.call_id, content='{"booked": true}') for c in answer.client_calls]
    return [*MIXED, turn, *results, *booked]


async def test_a_mixed_step_continues_with_the_server_call_and_its_result(mesh: AgentsMesh) -> None:
    async with AsyncClient(mesh.gateway) as client:
        answer, seed = await mixed_answer(client)
        assert answer.finish_reason == "tool_calls"
        messages = check_continuation(answer)
        final = await client.answer(
            messages=messages, retrieval=False, sampling=Sampling(max_tokens=16, temperature=0),
            tools=["weather", BOOK], tool_choice="none",
        )  # fmt: skip
        assert final.finish_reason in ("stop", "length") and final.text and not final.tool_calls
        job = await client.jobs.submit(
            messages=MIXED, retrieval=False, sampling=Sampling(max_tokens=120, temperature=1.0, seed=seed),
            tools=["weather", BOOK], tool_choice="required", max_steps=3,
        )  # fmt: skip
        async for update in client.jobs.watch(job.id, timeout_s=60):
            job = update.job or job
    assert job.state == "succeeded" and job.answer is not None
    ran = job.answer
    assert [(c.step, c.name, c.executor) for c in ran.tool_calls] == [
        (c.step, c.name, c.executor) for c in answer.tool_calls
    ]
    check_continuation(ran)
    assert [m["role"] for m in ran.output_messages] == [m["role"] for m in answer.output_messages]
