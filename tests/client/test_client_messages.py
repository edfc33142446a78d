"""OpenAI-shaped messages through the client to the inference service (a real gateway served in-process over
scripted upstreams): text or text parts or None as content, an assistant's tool calls, a tool's answer; a shape the
client cannot send is a ValueError naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from served import served_gateway

from genmesh.client import AsyncClient
from genmesh.client.requests import MessageDict, chat_message
from genmesh.messages import template_messages

CONVERSATION: list[MessageDict] = [
    {"role": "system", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Cite."}]},
    {"role": "user", "content": "What is 6 * 7?", "name": "ada"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"x": "6*7"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    {"role": "user", "content": "Thanks, and 6 * 8?"},
]


async def test_openai_shaped_messages_reach_the_model_as_sent(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        async with AsyncClient(served.address) as client:
            answer = await client.answer(messages=CONVERSATION, retrieval=False)
        (request,) = served.replicas.replicas[0].servicer.requests
    assert answer.text == "Generators yield values."
    rendered = template_messages(request.messages)
    assert rendered[-4:] == [
        {"role": "user", "content": "What is 6 * 7?", "name": "ada"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": {"x": "6*7"}}}
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        {"role": "user", "content": "Thanks, and 6 * 8?"},
    ]
    assert "Be brief.\nCite." in rendered[0]["content"]


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ({"role": "user", "content": "hi", "contents": "x"}, "messages[0].contents"),
        ({"role": "robot", "content": "hi"}, "messages[0].role"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}, "messages[0].content[0]"),
        ({"role": "user", "content": 7}, "messages[0].content"),
        ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}, "messages[0].tool_calls[0].function"),
        ({"role": "tool", "tool_call_id": 3, "content": "42"}, "messages[0].tool_call_id"),
    ],
)
def test_a_shape_the_client_cannot_send_names_its_key(message: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as raised:
        chat_message(message, "messages[0]")  # type: ignore[arg-type]  # what an untyped caller may pass
    assert str(raised.value).startswith(f"{named}:") or str(raised.value).startswith(f"{named} "), raised.value


async def test_a_job_answers_a_conversation_as_generate_does(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        async with AsyncClient(served.address) as client:
            job = await client.jobs.submit(messages=CONVERSATION, retrieval=False)
            updates = [u async for u in client.jobs.watch(job.id)]
        (request,) = served.replicas.replicas[0].servicer.requests
    assert updates[-1].job is not None and updates[-1].job.state == "succeeded"
    rendered = template_messages(request.messages)
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "tool", "user"]
    assert rendered[-1] == {"role": "user", "content": "Thanks, and 6 * 8?"}


async def test_a_misspelt_option_is_refused_naming_it_not_ignored() -> None:
    async with AsyncClient("127.0.0.1:9") as client:  # refused before any call: nothing listens there
        with pytest.raises(TypeError, match="'colection'"):
            await client.answer("What is 6 * 7?", colection="notes")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'colection'"):
            await client.jobs.submit("What is 6 * 7?", colection="notes")  # type: ignore[call-arg]
