"""A GatewayRequest with messages through the orchestrator over real in-process upstreams: retrieval searches the last
user message, inference gets the whole conversation after one system message holding the context, and inference's
field errors name the client's fields."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from inprocess import Fault, ScriptedMesh, ScriptedTool, start_scripted_mesh

from gateway.circuit import CircuitConfig
from gateway.orchestrator import Orchestrator
from gateway.policy import ResiliencePolicy
from gateway.upstreams import Upstreams
from genmesh.errors import FieldViolation, InvalidArgument
from genmesh.v1 import common_pb2, gateway_pb2


def text(role: common_pb2.Role.ValueType, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=[common_pb2.ContentPart(text=content)])


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedMesh]:
    running = await start_scripted_mesh(ScriptedTool("lookup", result_json='{"value": 42}', idempotent=True))
    yield running
    await running.stop()


@pytest.fixture
async def gateway(scripted: ScriptedMesh) -> AsyncIterator[Orchestrator]:
    upstreams = Upstreams(scripted.targets(), CircuitConfig())
    yield Orchestrator(upstreams, ResiliencePolicy(circuit=CircuitConfig()))
    await upstreams.close()


async def test_a_conversation_is_answered_and_retrieval_searches_its_last_user_message(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    messages = [
        text(common_pb2.ROLE_SYSTEM, "Be brief."),
        text(common_pb2.ROLE_USER, "Name a statement."),
        text(common_pb2.ROLE_ASSISTANT, "yield"),
        text(common_pb2.ROLE_USER, "What does yield do?"),
    ]
    events = [event async for event in gateway.answer(gateway_pb2.GatewayRequest(messages=messages), 5.0)]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "sources" and kinds[-1] == "complete" and "delta" in kinds
    (query,) = scripted.retrieval.requests
    assert query.text == "What does yield do?"
    (generate,) = scripted.inference.requests
    passage = scripted.retrieval.passages[0]
    assert list(generate.messages[1:]) == messages[1:] and not generate.prompt
    assert scripted.inference.prompts[0] == (
        f"Be brief.\n\n{passage.title}\n{passage.text}\n\n"
        "Question: Name a statement.\nAnswer: yield\n\nQuestion: What does yield do?\nAnswer:"
    )


async def test_without_a_client_system_message_the_context_goes_first_in_its_own(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    messages = [text(common_pb2.ROLE_USER, "Name a statement."), text(common_pb2.ROLE_ASSISTANT, "yield")]
    messages.append(text(common_pb2.ROLE_USER, "What does it do?"))
    request = gateway_pb2.GatewayRequest(
        messages=messages, tool_calls=[common_pb2.ToolCall(call_id="w", name="lookup")]
    )
    _ = [event async for event in gateway.answer(request, 5.0)]
    (generate,) = scripted.inference.requests
    assert [m.role for m in generate.messages] == [common_pb2.ROLE_SYSTEM, *(m.role for m in messages)]
    assert list(generate.messages[1:]) == messages
    system = generate.messages[0].content[0].text
    assert system.index(scripted.retrieval.passages[0].text) < system.index("Tool lookup({}) returned:")


@pytest.mark.parametrize(
    ("sent", "upstream_field", "client_field"),
    [("messages", "messages[2].content", "messages[1].content"), ("question", "messages[1]", "question")],
)
async def test_inference_field_errors_name_the_client_s_fields(
    scripted: ScriptedMesh, gateway: Orchestrator, sent: str, upstream_field: str, client_field: str
) -> None:
    refused = InvalidArgument([FieldViolation(upstream_field, "is refused")])
    scripted.inference.fault = Fault(grpc.StatusCode.INVALID_ARGUMENT, rich=refused)
    user = [text(common_pb2.ROLE_USER, "Name a statement."), text(common_pb2.ROLE_USER, "Another?")]
    request = gateway_pb2.GatewayRequest(**({"messages": user} if sent == "messages" else {"question": "q?"}))
    with pytest.raises(InvalidArgument) as raised:
        async for _ in gateway.answer(request, 5.0):
            pass
    assert [v.field for v in raised.value.violations] == [client_field]


async def test_both_question_and_messages_are_refused_before_any_stage_runs(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    request = gateway_pb2.GatewayRequest(question="q", messages=[text(common_pb2.ROLE_USER, "q")])
    with pytest.raises(InvalidArgument) as raised:
        async for _ in gateway.answer(request, 5.0):
            pass
    assert [v.field for v in raised.value.violations] == ["messages"]
    assert scripted.retrieval.requests == [] and scripted.inference.requests == []
