"""OpenAI's tools through the HTTP front: the body mapping and the chunks without a network, then with the official
``openai`` package before a real gateway, inference (the shipped model) and tools service (support.agent_tools):
client-side execution (tool_choice required: a valid call, finish_reason ``tool_calls``; the test runs it, sends
the messages back, the model answers), streamed and whole; server tools' steps come back in
``genmesh.output_messages``, with which a step mixing a server tool and a client function continues."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import pytest_asyncio
from support.agents_mesh import agents_mesh

from gateway.http.errors import HttpError, openai_name
from gateway.http.openai_chat import parse_request
from gateway.http.openai_stream import Chunk, Extra, Translator
from genmesh.channels import open_channel
from genmesh.v1 import common_pb2, gateway_pb2
from http_front.front import MODEL, Front, served_front

CITY = {"type": "string", "minLength": 1, "maxLength": 12}
PARAMETERS = {
    "type": "object", "properties": {"city": CITY}, "required": ["city"], "additionalProperties": False,
}  # fmt: skip
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": PARAMETERS}}  # fmt: skip
USER: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
QUIET = {"genmesh": {"retrieval": {"disabled": True}}}


def body(**fields: Any) -> dict[str, Any]:
    return {"messages": USER, "tools": [WEATHER], **fields}


def test_tools_and_tool_choice_map_to_the_gateway_request() -> None:
    server = {"type": "genmesh_tool", "name": "calculator"}
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_weather"}}, server]}}  # fmt: skip
    parsed = parse_request(
        body(tools=[WEATHER, server], tool_choice=allowed, parallel_tool_calls=False, genmesh={"max_steps": 3}),
        chat=True,
        served_model="m",
    )
    request = parsed.request
    function = request.tools[0].function
    assert (function.name, function.description, json.loads(function.parameters_json_schema)) == (
        "get_weather", "Weather of a city", PARAMETERS,
    )  # fmt: skip
    assert request.tools[1].server_tool == "calculator"
    assert request.tool_choice.mode == common_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert list(request.tool_choice.allowed_tool_names) == ["get_weather", "calculator"]
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls and request.max_steps == 3
    names = parsed.names
    assert openai_name("tools[0].function.parameters_json_schema.type", names) == "tools[0].function.parameters.type"
    assert openai_name("tools[1].server_tool", names) == "tools[1].name"
    assert openai_name("tool_choice.allowed_tool_names[1]", names) == "tool_choice.allowed_tools.tools[1].name"
    assert openai_name("max_steps", names) == "genmesh.max_steps"
    modes = {m: parse_request(body(tool_choice=m), chat=True, served_model="m").request.tool_choice.mode
             for m in ("none", "auto", "required")}  # fmt: skip
    assert modes == {"none": common_pb2.TOOL_CHOICE_MODE_NONE, "auto": common_pb2.TOOL_CHOICE_MODE_AUTO,
                     "required": common_pb2.TOOL_CHOICE_MODE_REQUIRED}  # fmt: skip
    named = parse_request(body(tool_choice={"type": "function", "function": {"name": "get_weather"}}), chat=True,
                          served_model="m")  # fmt: skip
    assert named.request.tool_choice.tool_name == "get_weather"
    assert openai_name("tool_choice.tool_name", named.names) == "tool_choice.function.name"
    plain = parse_request({"messages": USER}, chat=True, served_model="m").request
    assert not plain.tools and not plain.HasField("tool_choice") and not plain.HasField("parallel_tool_calls")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
         "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "params": {}}}]}, "tools[0].function.params"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}, "tools[0].function.strict"),
        ({"tools": [{"type": "genmesh_tool", "name": 7}]}, "tools[0].name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "none", "tools": [WEATHER]}}},
         "tool_choice.allowed_tools.mode"),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
         "tool_choice.allowed_tools.tools"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"genmesh": {"max_steps": "3"}}, "genmesh.max_steps"),
    ],
)  # fmt: skip
def test_a_bad_tools_shape_is_a_400_naming_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(HttpError) as refused:
        parse_request(body(**fields), chat=True, served_model="m")
    assert (refused.value.status, refused.value.param) == (400, param), refused.value.message
    with pytest.raises(HttpError) as completions:
        parse_request({"prompt": "q", "tools": [WEATHER]}, chat=False, served_model="m")
    assert completions.value.param == "tools"


def _call(step: int, name: str, executor: gateway_pb2.ToolExecutor.ValueType, call_id: str) -> gateway_pb2.GatewayEvent:
    call = common_pb2.ToolCall(call_id=call_id, name=name, arguments_json='{"city": "Paris"}')
    return gateway_pb2.GatewayEvent(tool_call=gateway_pb2.ToolCallEvent(step=step, call=call, executor=executor))


def _agent_events() -> list[gateway_pb2.GatewayEvent]:
    """A server tool's step (its text and result), then a step calling two client functions."""
    usage = common_pb2.Usage(prompt_tokens=30, completion_tokens=9)
    return [
        gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text="Checking.")),
        _call(1, "calculator", gateway_pb2.TOOL_EXECUTOR_GATEWAY, "call_s"),
        gateway_pb2.GatewayEvent(
            step_end=gateway_pb2.StepEnd(step=1, finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS, usage=usage)
        ),
        gateway_pb2.GatewayEvent(
            tool_result=common_pb2.ToolResult(call_id="call_s", name="calculator", result_json="42")
        ),
        *[gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(token_ids=[9], text=""))] * 3,  # withheld call
        _call(2, "get_weather", gateway_pb2.TOOL_EXECUTOR_CLIENT, "call_a"),
        _call(2, "get_weather", gateway_pb2.TOOL_EXECUTOR_CLIENT, "call_b"),
        gateway_pb2.GatewayEvent(
            step_end=gateway_pb2.StepEnd(step=2, finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS, usage=usage)
        ),
        gateway_pb2.GatewayEvent(
            complete=common_pb2.Completion(
                finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS,
                usage=common_pb2.Usage(prompt_tokens=60, completion_tokens=18),
            )
        ),
    ]


def test_client_calls_are_chunk_tool_calls_and_server_calls_stay_genmesh_events() -> None:
    translator = Translator(parse_request(body(stream=True, stream_options={"include_usage": True}), chat=True,
                                          served_model="m"))  # fmt: skip
    outputs = [o for event in _agent_events() for o in translator.outputs(event)]
    chunks = [o.data for o in outputs if isinstance(o, Chunk)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [(c["index"], c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        (0, "call_a", "function", "get_weather"), (1, "call_b", "function", "get_weather"),
    ]  # fmt: skip
    assert all(json.loads(c["function"]["arguments"]) == {"city": "Paris"} for c in calls)
    assert [d.get("content") for d in deltas] == ["Checking.", None, None, None]  # no chunk for withheld tokens
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["genmesh"]["output_messages"] == OUTPUT_MESSAGES
    assert all("genmesh" not in c for c in chunks[:-2])
    assert chunks[-1]["usage"] == {"prompt_tokens": 60, "completion_tokens": 18, "total_tokens": 78}
    extras = [(o.name, o.data.get("executor")) for o in outputs if isinstance(o, Extra) and "tool" in o.name]
    assert extras == [("genmesh.tool_call", "gateway"), ("genmesh.tool_result", None),
                      ("genmesh.tool_call", "client"), ("genmesh.tool_call", "client")]  # fmt: skip
    steps = [o.data for o in outputs if isinstance(o, Extra) and o.name == "genmesh.step_end"]
    assert [(s["step"], s["finish_reason"], s["usage"]["completion_tokens"]) for s in steps] == [
        (1, "tool_calls", 9), (2, "tool_calls", 9),
    ]  # fmt: skip


def _entry(call_id: str, name: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": '{"city": "Paris"}'}}


OUTPUT_MESSAGES = [  # _agent_events' continuation: every step's turn with every call, and the server call's result
    {"role": "assistant", "content": "Checking.", "tool_calls": [_entry("call_s", "calculator")]},
    {"role": "tool", "content": "42", "tool_call_id": "call_s"},
    {"role": "assistant", "content": None, "tool_calls": [_entry("call_a", "get_weather"),
                                                          _entry("call_b", "get_weather")]},
]  # fmt: skip


def whole_of(events: list[gateway_pb2.GatewayEvent]) -> dict[str, Any]:
    translator = Translator(parse_request(body(), chat=True, served_model="m"))
    for event in events:
        translator.outputs(event)
    return translator.whole()


def test_a_whole_answer_carries_message_tool_calls_and_null_content_without_text() -> None:
    whole = whole_of(_agent_events())
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Checking."
    assert [c["id"] for c in choice["message"]["tool_calls"]] == ["call_a", "call_b"]
    assert whole["genmesh"]["output_messages"] == OUTPUT_MESSAGES
    only_calls = whole_of(_agent_events()[4:])
    message = only_calls["choices"][0]["message"]
    assert message["content"] is None and len(message["tool_calls"]) == 2
    assert [s["step"] for s in only_calls["genmesh"]["steps"]] == [2]
    assert "output_messages" not in only_calls["genmesh"]  # the message is the whole continuation


def test_steps_texts_are_one_content_a_blank_line_apart_and_their_own_turns() -> None:
    usage = common_pb2.Usage(prompt_tokens=30, completion_tokens=9)
    events = [
        gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text="Checking.")),
        _call(1, "calculator", gateway_pb2.TOOL_EXECUTOR_GATEWAY, "call_s"),
        gateway_pb2.GatewayEvent(step_end=gateway_pb2.StepEnd(step=1, usage=usage)),
        gateway_pb2.GatewayEvent(tool_result=common_pb2.ToolResult(call_id="call_s", result_json="42")),
        gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text="It is")),
        gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text=" 42.")),
        gateway_pb2.GatewayEvent(step_end=gateway_pb2.StepEnd(step=2, usage=usage)),
        gateway_pb2.GatewayEvent(complete=common_pb2.Completion(usage=usage)),
    ]
    streamed = Translator(parse_request(body(stream=True), chat=True, served_model="m"))
    chunks = [o.data for e in events for o in streamed.outputs(e) if isinstance(o, Chunk)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Checking.\n\nIt is 42."
    answer = whole_of(events)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Checking.\n\nIt is 42."}
    assert [(m["role"], m["content"]) for m in answer["genmesh"]["output_messages"]] == [
        ("assistant", "Checking."), ("tool", "42"), ("assistant", "It is 42."),
    ]  # fmt: skip


@pytest_asyncio.fixture(scope="module")
async def front(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Front]:
    """The front before a gateway over real inference and tools services."""
    async with (
        agents_mesh(Path(tmp_path_factory.mktemp("openai-tools"))) as parts,
        open_channel(parts.gateway) as channel,
        served_front(channel) as served,
    ):
        yield served


@pytest_asyncio.fixture(scope="module")
async def model_client(front: Front) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=front.url + "/v1", api_key="none", max_retries=0) as opened:
        yield opened


def weather(arguments: str) -> str:
    """The client's function: validates its arguments as the test's caller would, then answers."""
    city = json.loads(arguments)
    jsonschema.validate(city, PARAMETERS)
    return json.dumps({"city": city["city"], "temperature_c": 21})


async def test_client_side_execution_round_trip_whole(model_client: openai.AsyncOpenAI) -> None:
    first = await model_client.chat.completions.create(
        model=MODEL, messages=USER, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        max_tokens=120, temperature=0, extra_body=QUIET,
    )  # type: ignore[call-overload]  # fmt: skip
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert len(call.id) == len("call_") + 24
    result = weather(call.function.arguments)
    second = await model_client.chat.completions.create(
        model=MODEL, messages=[*USER, choice.message, {"role": "tool", "tool_call_id": call.id, "content": result}],
        tools=[WEATHER], tool_choice="none", max_tokens=16, temperature=0, extra_body=QUIET,
    )  # type: ignore[call-overload]  # fmt: skip
    assert second.choices[0].finish_reason in ("stop", "length") and not second.choices[0].message.tool_calls
    assert second.choices[0].message.content
    assert first.usage is not None and first.usage.completion_tokens > 0


async def test_client_side_execution_round_trip_streamed(model_client: openai.AsyncOpenAI) -> None:
    stream = await model_client.chat.completions.create(
        model=MODEL, messages=USER, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False,
        max_tokens=120, temperature=0, stream=True, stream_options={"include_usage": True}, extra_body=QUIET,
    )  # type: ignore[call-overload]  # fmt: skip
    calls: dict[int, dict[str, str]] = {}
    finish, usage = None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                function = delta.function
                entry["id"] += delta.id or ""
                entry["name"] += (function.name if function else None) or ""
                entry["arguments"] += (function.arguments if function else None) or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["name"] == "get_weather" and usage is not None and usage.completion_tokens > 0
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
        ],
    }
    answer = await model_client.chat.completions.create(
        model=MODEL, messages=[*USER, assistant, {"role": "tool", "tool_call_id": call["id"],
                                                  "content": weather(call["arguments"])}],
        tools=[WEATHER], tool_choice="none", max_tokens=16, temperature=0, stream=True, extra_body=QUIET,
    )  # type: ignore[call-overload]  # fmt: skip
    text, finish = "", None
    async for chunk in answer:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            assert not choice.delta.tool_calls
            finish = choice.finish_reason or finish
    assert finish in ("stop", "length") and text


async def test_a_bad_tool_choice_is_a_400_naming_the_param(model_client: openai.AsyncOpenAI) -> None:
    async def refused(**fields: Any) -> str | None:
        with pytest.raises(openai.BadRequestError) as error:
            await model_client.chat.completions.create(model=MODEL, messages=USER, extra_body=QUIET, **fields)
        return error.value.param

    assert await refused(tools=[WEATHER], tool_choice="sometimes") == "tool_choice"
    named = {"type": "function", "function": {"name": "get_time"}}
    assert await refused(tools=[WEATHER], tool_choice=named) == "tool_choice.function.name"
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    assert (await refused(tools=[bad_schema]) or "").startswith("tools[0].function.parameters")
    assert await refused(tool_choice="required") == "tool_choice"


async def test_a_server_tool_step_stays_inside_the_mesh(front: Front, model_client: openai.AsyncOpenAI) -> None:
    fields: dict[str, Any] = {
        "model": MODEL, "messages": USER, "tools": [{"type": "genmesh_tool", "name": "weather"}],
        "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 60, "temperature": 0,
    }  # fmt: skip
    extension = {"genmesh": {"retrieval": {"disabled": True}, "max_steps": 2, "events": True}}
    events: list[tuple[str | None, Any]] = []
    url, streamed = front.url + "/v1/chat/completions", {**fields, **extension, "stream": True}
    async with httpx.AsyncClient(timeout=60) as http, http.stream("POST", url, json=streamed) as reply:
        assert reply.status_code == 200
        name = None
        async for line in reply.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and line != "data: [DONE]":
                events.append((name, json.loads(line.removeprefix("data: "))))
                name = None
    chunks = [data["choices"][0] for name, data in events if name is None and data["choices"]]
    assert not [c for c in chunks if c["delta"].get("tool_calls")]
    assert chunks[-1]["finish_reason"] in ("stop", "length")
    assert [c for c in chunks if c["delta"].get("content") == ""] == chunks[:1]  # the role chunk; withheld: none
    finish = [data for name, data in events if name is None and data["choices"]][-1]
    roles = [m["role"] for m in finish["genmesh"]["output_messages"]]
    assert roles == ["assistant", "tool", "assistant"]
    named = [(name, data) for name, data in events if name is not None]
    calls = [data for name, data in named if name == "genmesh.tool_call"]
    assert [(c["step"], c["name"], c["executor"]) for c in calls] == [(1, "weather", "gateway")]
    (result,) = [data for name, data in named if name == "genmesh.tool_result"]
    assert result["call_id"] == calls[0]["call_id"] and result["result"]["celsius"] == 21
    assert [data["step"] for name, data in named if name == "genmesh.step_end"] == [1, 2]
    whole = await model_client.chat.completions.create(**fields, extra_body=extension)
    assert whole.choices[0].finish_reason in ("stop", "length") and not whole.choices[0].message.tool_calls
    extras = (whole.model_extra or {})["genmesh"]
    assert [(c["executor"], c["name"]) for c in extras["tool_calls"]] == [("gateway", "weather")]
    assert [s["finish_reason"] for s in extras["steps"]] == ["tool_calls", whole.choices[0].finish_reason]
    (turn, result, answer) = extras["output_messages"]
    assert [c["id"] for c in turn["tool_calls"]] == [extras["tool_calls"][0]["call_id"]]
    assert result["tool_call_id"] == extras["tool_calls"][0]["call_id"] and json.loads(result["content"])["celsius"]
    assert answer == {"role": "assistant", "content": whole.choices[0].message.content}


BOOK: dict[str, Any] = {"type": "function", "function": {"name": "book_table", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}  # fmt: skip
MIXED: list[Any] = [{"role": "user", "content": "What is the weather in Paris? Book a table there."}]
MIXED_TOOLS: list[Any] = [{"type": "genmesh_tool", "name": "weather"}, BOOK]
SEEDS = 16  # tried for a step calling both the server tool and the client function (most do, at temperature 1)


async def test_a_mixed_step_continues_with_genmesh_output_messages(model_client: openai.AsyncOpenAI) -> None:
    fields: dict[str, Any] = {"model": MODEL, "messages": MIXED, "tools": MIXED_TOOLS, "tool_choice": "required",
                              "max_tokens": 120, "temperature": 1.0, "extra_body": {**QUIET}}  # fmt: skip
    for seed in range(SEEDS):
        first = await model_client.chat.completions.create(**fields, seed=seed)
        extras = (first.model_extra or {})["genmesh"]
        calls = extras["tool_calls"]
        executors = {(c["name"], c["executor"]) for c in calls}
        if {("weather", "gateway"), ("book_table", "client")} <= executors and len(extras["steps"]) == 1:
            break
    else:
        raise AssertionError(f"no seed of {SEEDS} made a step calling both tools")
    choice, output = first.choices[0], extras["output_messages"]
    assert choice.finish_reason == "tool_calls"
    turn, *results = output
    assert [c["id"] for c in turn["tool_calls"]] == [c["call_id"] for c in calls]
    server = [c["call_id"] for c in calls if c["executor"] == "gateway"]
    assert [(m["role"], m["tool_call_id"]) for m in results] == [("tool", i) for i in server]
    weather_ids = {c["call_id"] for c in calls if c["name"] == "weather"}
    assert any(json.loads(m["content"]).get("celsius") == 21 for m in results if m["tool_call_id"] in weather_ids)
    client_ids = [c.id for c in choice.message.tool_calls or []]
    assert client_ids == [c["call_id"] for c in calls if c["executor"] == "client"]
    booked = [{"role": "tool", "tool_call_id": i, "content": '{"booked": true}'} for i in client_ids]
    second = await model_client.chat.completions.create(
        **{**fields, "messages": [*MIXED, *output, *booked], "tool_choice": "none", "max_tokens": 16}, seed=0
    )
    assert second.choices[0].finish_reason in ("stop", "length") and second.choices[0].message.content
    stream = await model_client.chat.completions.create(**fields, seed=seed, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.choices[0].delta.content != "" for c in chunks[1:] if c.choices)  # no chunk for withheld tokens
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    streamed = (finish.model_extra or {})["genmesh"]["output_messages"]
    shape = [(m["role"], [c["function"]["name"] for c in m.get("tool_calls", [])]) for m in output]
    assert [(m["role"], [c["function"]["name"] for c in m.get("tool_calls", [])]) for m in streamed] == shape
