"""A GatewayRequest with messages through the orchestrator over real in-process upstreams: retrieval searches the last
user message, and the answer streams as for a question (the prompt is not yet the chat template's: see AnswerPlan)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from inprocess import ScriptedMesh, start_scripted_mesh

from gateway.circuit import CircuitConfig
from gateway.orchestrator import Orchestrator
from gateway.policy import ResiliencePolicy
from gateway.upstreams import Upstreams
from genmesh.errors import InvalidArgument
from genmesh.v1 import common_pb2, gateway_pb2


def text(role: common_pb2.Role.ValueType, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=[common_pb2.ContentPart(text=content)])


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedMesh]:
    running = await start_scripted_mesh()
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
    assert "Question: What does yield do?" in scripted.inference.prompts[0]


async def test_both_question_and_messages_are_refused_before_any_stage_runs(
    scripted: ScriptedMesh, gateway: Orchestrator
) -> None:
    request = gateway_pb2.GatewayRequest(question="q", messages=[text(common_pb2.ROLE_USER, "q")])
    with pytest.raises(InvalidArgument) as raised:
        async for _ in gateway.answer(request, 5.0):
            pass
    assert [v.field for v in raised.value.violations] == ["messages"]
    assert scripted.retrieval.requests == [] and scripted.inference.requests == []
