"""The agent fields of a GatewayRequest checked: tools (server tools from the listing, "*", functions with their
schemas), tool_choice, max_steps, parallel_tool_calls; each bad field named."""

from __future__ import annotations

import json

import pytest

from gateway.agent.plan import DEFAULT_MAX_STEPS, MAX_TOOLS
from gateway.request import AnswerPlan, plan_request
from genmesh.errors import InvalidArgument
from genmesh.messages import MAX_MESSAGES
from genmesh.v1 import common_pb2, gateway_pb2, tools_pb2

SPECS = {
    name: tools_pb2.ToolSpec(name=name, description=f"The {name} tool.", parameters_json_schema='{"type": "object"}')
    for name in ("calculator", "clock", "secret")
}
Function = common_pb2.FunctionDeclaration


def request(*tools: str | Function, **fields: object) -> gateway_pb2.GatewayRequest:
    made = gateway_pb2.GatewayRequest(question="q?", **fields)  # type: ignore[arg-type]
    for tool in tools:
        declared = (
            gateway_pb2.ToolDeclaration(server_tool=tool)
            if isinstance(tool, str)
            else gateway_pb2.ToolDeclaration(function=tool)
        )
        made.tools.append(declared)
    return made


def plan(made: gateway_pb2.GatewayRequest, allowed: frozenset[str] = frozenset()) -> AnswerPlan:
    return plan_request(made, {}, allowed_tools=allowed, tool_specs=SPECS)


def refused(made: gateway_pb2.GatewayRequest, allowed: frozenset[str] = frozenset()) -> list[str]:
    with pytest.raises(InvalidArgument) as error:
        plan(made, allowed)
    return [v.field for v in error.value.violations]


def test_without_tools_there_is_no_loop_and_its_fields_are_refused() -> None:
    assert plan(request()).agent is None
    choice = common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED)
    made = request(tool_choice=choice, max_steps=2, parallel_tool_calls=False)
    assert refused(made) == ["tool_choice", "max_steps", "parallel_tool_calls"]


def test_server_tools_and_functions_become_declarations() -> None:
    schema = {"type": "object", "properties": {"zone": {"enum": ["UTC"]}}}
    agent = plan(request("clock", Function(name="now", parameters_json_schema=json.dumps(schema)))).agent
    assert agent is not None
    assert [(t.name, t.server) for t in agent.tools.values()] == [("clock", True), ("now", False)]
    assert agent.declarations()[0].description == "The clock tool."
    assert agent.tools["now"].schema == schema
    assert agent.max_steps == DEFAULT_MAX_STEPS and agent.parallel_tool_calls is None
    assert agent.choice(DEFAULT_MAX_STEPS).mode == common_pb2.TOOL_CHOICE_MODE_NONE
    assert agent.choice(1) == common_pb2.ToolChoice()


def test_a_star_offers_every_tool_the_key_may_call() -> None:
    agent = plan(request("*"), allowed=frozenset({"clock", "calculator"})).agent
    assert agent is not None and list(agent.tools) == ["calculator", "clock"]
    assert refused(request("secret"), allowed=frozenset({"clock"})) == ["tools[0].server_tool"]


def test_an_empty_schema_is_any_object_and_a_missing_type_is_object() -> None:
    agent = plan(request(Function(name="f"), Function(name="g", parameters_json_schema='{"required": ["x"]}'))).agent
    assert agent is not None and agent.tools["f"].schema == {"type": "object"}
    assert agent.tools["g"].schema == {"type": "object", "required": ["x"]}


@pytest.mark.parametrize(
    ("function", "field"),
    [
        (Function(name="bad name"), "tools[0].function.name"),
        (Function(name=""), "tools[0].function.name"),
        (Function(name="f", description="x" * 4097), "tools[0].function.description"),
        (Function(name="f", parameters_json_schema="{"), "tools[0].function.parameters_json_schema"),
        (Function(name="f", parameters_json_schema="[1]"), "tools[0].function.parameters_json_schema"),
        (Function(name="f", parameters_json_schema='{"type": 5}'), "tools[0].function.parameters_json_schema"),
        (
            Function(name="f", parameters_json_schema='{"type": "string"}'),
            "tools[0].function.parameters_json_schema.type",
        ),
        (
            Function(name="f", parameters_json_schema='{"type": ["object", "null"]}'),
            "tools[0].function.parameters_json_schema.type",
        ),
        (Function(name="f", parameters_json_schema=" " * 262_145), "tools[0].function.parameters_json_schema"),
    ],
)
def test_a_bad_function_is_refused_naming_its_field(function: Function, field: str) -> None:
    assert refused(request(function)) == [field]


def test_names_are_unique_across_server_tools_and_functions() -> None:
    assert refused(request("clock", Function(name="clock"))) == ["tools[1].function.name"]
    assert refused(request(Function(name="clock"), "clock")) == ["tools[1].server_tool"]
    assert refused(request(Function(name="f"), Function(name="f"))) == ["tools[1].function.name"]


def test_a_star_clashing_with_a_function_is_refused_in_either_order() -> None:
    assert refused(request(Function(name="clock"), "*")) == ["tools[1].server_tool"]
    assert refused(request("*", Function(name="clock"))) == ["tools[1].function.name"]
    agent = plan(request(Function(name="clock"), "*"), allowed=frozenset({"calculator"})).agent
    assert agent is not None and [t.server for t in agent.tools.values()] == [False, True]  # clock not callable


def test_each_declaration_maps_back_to_the_client_s_tool_entry() -> None:
    agent = plan(request(Function(name="now"), "*", "clock", Function(name="later"))).agent
    assert agent is not None
    assert [d.name for d in agent.declarations()] == ["now", "calculator", "clock", "secret", "later"]
    origins = [agent.request_index(k) for k in range(5)]
    assert origins == [
        "tools[0].function",
        "tools[1].server_tool",
        "tools[1].server_tool",
        "tools[1].server_tool",
        "tools[3].function",
    ]
    assert agent.client_field("tools[4].parameters_json_schema.type") == "tools[3].function.parameters_json_schema.type"
    assert agent.client_field("tools[2].parameters_json_schema") == "tools[1].server_tool"
    assert agent.client_field("tools") == "tools" and agent.client_field("tools[9].name") == "tools[9].name"


def test_max_steps_that_would_grow_the_conversation_past_its_bound_is_refused() -> None:
    message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(text="q")])
    long = gateway_pb2.GatewayRequest(messages=[message] * (MAX_MESSAGES - 8))
    long.tools.append(gateway_pb2.ToolDeclaration(server_tool="clock"))
    long.max_steps = 4
    assert plan(long).agent is not None
    long.max_steps = 5
    assert refused(long) == ["max_steps"]


def test_bounds_of_tools_max_steps_and_tool_choice() -> None:
    assert refused(request(*["clock"] * (MAX_TOOLS + 1))) == ["tools"]
    assert refused(request("clock", max_steps=0)) == ["max_steps"]
    assert refused(request("clock", max_steps=17)) == ["max_steps"]
    assert plan(request("clock", max_steps=16)).agent is not None
    assert refused(request("clock", tool_choice=common_pb2.ToolChoice(tool_name="calculator"))) == [
        "tool_choice.tool_name"
    ]
    allowed = common_pb2.ToolChoice(allowed_tool_names=["clock", "nope"])
    assert refused(request("clock", tool_choice=allowed)) == ["tool_choice.allowed_tool_names[1]"]
    assert refused(request("clock", tool_choice=common_pb2.ToolChoice(mode=9))) == ["tool_choice.mode"]  # type: ignore[arg-type]
    empty = request()
    empty.tools.append(gateway_pb2.ToolDeclaration())
    assert refused(empty) == ["tools[0]"]


def test_several_samples_are_refused_with_tools() -> None:
    made = request("clock", sampling=common_pb2.SamplingParams(n=2))
    assert refused(made) == ["sampling.n"]


def test_without_a_listing_server_tools_are_left_to_the_run() -> None:
    """As SubmitJob checks a job's request: the tools service is not asked."""
    made = request("clock", Function(name="f"), tool_choice=common_pb2.ToolChoice(tool_name="clock"))
    agent = plan_request(made, None, tool_specs=None).agent
    assert agent is not None and list(agent.tools) == ["f"]
