"""genmesh.messages: ChatMessage bounds by field path, and the dicts Hugging Face chat templates read."""

from __future__ import annotations

from genmesh.messages import MAX_MESSAGE_CHARS, last_user_text, message_violations, template_messages
from genmesh.v1 import common_pb2

Message = common_pb2.ChatMessage
Part = common_pb2.ContentPart


def test_messages_become_hugging_face_chat_dicts() -> None:
    messages = [
        Message(role=common_pb2.ROLE_SYSTEM, content=[Part(text="Be brief.")]),
        Message(role=common_pb2.ROLE_USER, name="ada", content=[Part(text="6 * 7?"), Part(text="Exactly.")]),
        Message(
            role=common_pb2.ROLE_ASSISTANT,
            tool_calls=[common_pb2.ToolCall(call_id="call_1", name="calculator", arguments_json='{"x": "6*7"}')],
        ),
        Message(role=common_pb2.ROLE_TOOL, tool_call_id="call_1", content=[Part(text='{"value": 42}')]),
    ]
    assert message_violations(messages) == []
    assert template_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "6 * 7?\nExactly.", "name": "ada"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": {"x": "6*7"}}}
            ],
        },
        {"role": "tool", "content": '{"value": 42}', "tool_call_id": "call_1"},
    ]
    assert last_user_text(messages) == "6 * 7?\nExactly."
    assert last_user_text(messages[:1]) == ""


def test_every_bad_field_is_named() -> None:
    messages = [
        Message(role=common_pb2.ROLE_USER, name="not a name", content=[Part(text="x" * (MAX_MESSAGE_CHARS + 1))]),
        Message(role=common_pb2.ROLE_USER, content=[Part()], tool_call_id="c"),
        Message(role=common_pb2.ROLE_USER, tool_calls=[common_pb2.ToolCall(call_id="é", name="")]),
        Message(role=common_pb2.ROLE_TOOL, tool_call_id="x" * 65, content=[Part(text="r")]),
    ]
    fields = [v.field for v in message_violations(messages, field="request.messages")]
    assert fields == [
        "request.messages[0].content",
        "request.messages[0].name",
        "request.messages[1].content[0]",
        "request.messages[1].tool_call_id",
        "request.messages[2].tool_calls",
        "request.messages[2].tool_calls[0].call_id",
        "request.messages[2].tool_calls[0].name",
        "request.messages[3].tool_call_id",
    ]


def test_images_pass_only_where_they_are_taken() -> None:
    image = [Message(role=common_pb2.ROLE_USER, content=[Part(image=common_pb2.Image(data=b"\x89PNG"))])]
    assert [v.field for v in message_violations(image)] == ["messages[0].content[0].image"]
    assert message_violations(image, images=True) == []


def test_deep_huge_or_non_finite_arguments_are_refused_naming_the_field() -> None:
    def assistant(arguments_json: str) -> Message:
        call = common_pb2.ToolCall(call_id="c1", name="lookup", arguments_json=arguments_json)
        return Message(role=common_pb2.ROLE_ASSISTANT, tool_calls=[call])

    for arguments_json in ('{"a":' * 200_000, '{"a":' * 30_000, '{"x": NaN}', '{"x": "' + "y" * 70_000 + '"}', "[1]"):
        (violation,) = message_violations([assistant(arguments_json)])
        assert violation.field == "messages[0].tool_calls[0].arguments_json", arguments_json[:20]
    assert message_violations([assistant(""), assistant(" ")]) != []  # the id repeats; empty arguments are fine


def test_an_empty_text_part_is_empty_content_and_call_ids_are_unique_across_messages() -> None:
    def calls(*ids: str) -> Message:
        return Message(
            role=common_pb2.ROLE_ASSISTANT, tool_calls=[common_pb2.ToolCall(call_id=i, name="lookup") for i in ids]
        )

    messages = [
        Message(role=common_pb2.ROLE_USER, content=[Part(text="")]),
        calls("c1", "c2"),
        Message(role=common_pb2.ROLE_TOOL, tool_call_id="c1", content=[Part(text="42")]),
        calls("c2", "c3", "c3"),
    ]
    violations = message_violations(messages)
    assert [v.field for v in violations] == [
        "messages[0].content",
        "messages[3].tool_calls[0].call_id",
        "messages[3].tool_calls[2].call_id",
    ]
    assert "messages[1].tool_calls[1].call_id" in violations[1].description
