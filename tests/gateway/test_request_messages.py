"""plan_request with GatewayRequest.messages: exactly one of question and messages, each message checked by its path."""

from __future__ import annotations

import pytest

from gateway.request import plan_request
from genmesh.errors import InvalidArgument
from genmesh.messages import MAX_MESSAGES
from genmesh.v1 import common_pb2, gateway_pb2

Request = gateway_pb2.GatewayRequest
Message = common_pb2.ChatMessage


def text(role: common_pb2.Role.ValueType, content: str) -> Message:
    return Message(role=role, content=[common_pb2.ContentPart(text=content)])


def bad_fields(request: Request) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as raised:
        plan_request(request, None)
    return {v.field: v.description for v in raised.value.violations}


def test_a_conversation_is_planned_with_its_last_user_message_as_the_question() -> None:
    messages = [
        text(common_pb2.ROLE_SYSTEM, "Be brief."),
        text(common_pb2.ROLE_USER, "Name a statement."),
        text(common_pb2.ROLE_ASSISTANT, "with"),
        Message(
            role=common_pb2.ROLE_USER,
            content=[common_pb2.ContentPart(text=" What does it do?"), common_pb2.ContentPart(text="In short. ")],
        ),
    ]
    plan = plan_request(Request(messages=messages), None)
    assert plan.question == "What does it do?\nIn short."
    assert plan.messages == tuple(messages)
    assert plan_request(Request(question="q"), None).messages == ()


def test_neither_question_nor_messages_names_the_question() -> None:
    assert bad_fields(Request()) == {"question": "must not be empty"}


def test_both_question_and_messages_names_messages() -> None:
    fields = bad_fields(Request(question="q", messages=[text(common_pb2.ROLE_USER, "q")]))
    assert fields == {"messages": "set either question or messages, not both"}


def test_a_conversation_without_a_user_message_is_refused() -> None:
    assert bad_fields(Request(messages=[text(common_pb2.ROLE_SYSTEM, "Be brief.")])) == {
        "messages": "must hold a ROLE_USER message with text"
    }


def test_each_bad_message_field_is_named_by_its_path() -> None:
    messages = [
        text(common_pb2.ROLE_UNSPECIFIED, "x"),
        Message(role=common_pb2.ROLE_USER),
        Message(role=common_pb2.ROLE_USER, content=[common_pb2.ContentPart(image=common_pb2.Image(uri="x"))]),
        Message(role=common_pb2.ROLE_TOOL, content=[common_pb2.ContentPart(text="42")]),
        Message(
            role=common_pb2.ROLE_ASSISTANT,
            tool_calls=[common_pb2.ToolCall(call_id="c", name="calculator", arguments_json="[1]")],
        ),
        text(common_pb2.ROLE_USER, "q"),
    ]
    fields = bad_fields(Request(messages=messages, sampling=common_pb2.SamplingParams(max_tokens=-1)))
    assert set(fields) == {
        "messages[0].role",
        "messages[1].content",
        "messages[2].content[0].image",
        "messages[3].tool_call_id",
        "messages[4].tool_calls[0].arguments_json",
        "sampling.max_tokens",
    }


def test_too_many_messages() -> None:
    messages = [text(common_pb2.ROLE_USER, "q")] * (MAX_MESSAGES + 1)
    assert list(bad_fields(Request(messages=messages))) == ["messages"]
    assert len(plan_request(Request(messages=messages[:MAX_MESSAGES]), None).messages) == MAX_MESSAGES
