"""The orchestrator's guarded upstream calls over real gRPC: the half-open probe, and the time each upstream gets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from inprocess import Fault, ScriptedInference, ScriptedMesh, ScriptedRetrieval, ScriptedTool, ScriptedTools

from gateway.circuit import CircuitConfig
from gateway.deadlines import DEADLINE_SHARE
from gateway.orchestrator import Orchestrator
from gateway.upstreams import Upstreams
from genmesh.deadlines import DEADLINE_MARGIN_S
from genmesh.errors import GenmeshError
from genmesh.status import status_code_of
from genmesh.v1 import common_pb2, gateway_pb2, inference_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc, tools_pb2_grpc

NO_RETRIEVAL = gateway_pb2.RetrievalOptions(disabled=True)
COOLDOWN_S = 0.3
ANSWER = "Generators yield values."
ENCODING_S = 0.002
"""How far gRPC's encoding of a timeout (grpc-timeout: at most 8 digits and a unit) may round it up."""


class TimedRetrieval(ScriptedRetrieval):
    """ScriptedRetrieval that also records the time each Query (and GetEmbedderInfo) had left when it arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.time_remaining: list[float | None] = []
        self.info_time_remaining: list[float | None] = []

    async def GetEmbedderInfo(  # type: ignore[override]
        self, request: retrieval_pb2.GetEmbedderInfoRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.GetEmbedderInfoResponse:
        self.info_time_remaining.append(context.time_remaining())
        return retrieval_pb2.GetEmbedderInfoResponse(model="scripted-embedder", dimensions=4)

    async def Query(
        self, request: retrieval_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.QueryResponse:
        self.time_remaining.append(context.time_remaining())
        return await super().Query(request, context)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedMesh]:
    """The scripted upstreams of inprocess.py, with a retrieval service that records its calls' deadlines."""
    retrieval, tools, inference = TimedRetrieval(), ScriptedTools(ScriptedTool("lookup")), ScriptedInference()
    server = grpc.aio.server()
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(retrieval, server)
    tools_pb2_grpc.add_ToolsServiceServicer_to_server(tools, server)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(inference, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    running = ScriptedMesh(retrieval, tools, inference, server, f"127.0.0.1:{port}")
    yield running
    await running.stop()


@pytest.fixture
async def upstreams(scripted: ScriptedMesh) -> AsyncIterator[Upstreams]:
    opened = Upstreams(scripted.targets(), CircuitConfig(failures=2, cooldown_s=COOLDOWN_S))
    yield opened
    await opened.close()


async def _ask(gateway: Orchestrator, request: gateway_pb2.GatewayRequest, time_remaining: float = 5.0) -> str:
    """The answer's text, or the name of the status it failed with."""
    text = ""
    try:
        async for event in gateway.answer(request, time_remaining):
            text += event.delta.text
    except GenmeshError as error:
        return f"{status_code_of(error).name}: {error.message}"
    return text


async def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_the_circuit(
    scripted: ScriptedMesh, upstreams: Upstreams
) -> None:
    gateway = Orchestrator(upstreams)
    request = gateway_pb2.GatewayRequest(question="q?", retrieval=NO_RETRIEVAL)
    scripted.inference.fault = Fault(grpc.StatusCode.INTERNAL, "engine crashed", times=2)
    failed = [await _ask(gateway, request) for _ in range(2)]
    assert failed == ["INTERNAL: engine crashed"] * 2
    refused = await _ask(gateway, request)
    assert refused.startswith("UNAVAILABLE: inference circuit is open after") and "2 failures in a row" in refused
    assert len(scripted.inference.requests) == 2, "an open circuit does not call Generate"

    await asyncio.sleep(COOLDOWN_S * 1.2)  # the cool-down itself is what the test waits for
    scripted.inference.delta_delay_s = 0.05  # the probe is still streaming while the other two arrive
    answers = await asyncio.gather(*(_ask(gateway, request) for _ in range(3)))
    assert answers.count(ANSWER) == 1, answers
    assert all("circuit is open" in a for a in answers if a != ANSWER), answers
    assert len(scripted.inference.requests) == 3, "one probe at a time in the half-open state"

    scripted.inference.delta_delay_s = 0.0
    assert await asyncio.gather(*(_ask(gateway, request) for _ in range(2))) == [ANSWER] * 2
    assert len(scripted.inference.requests) == 5, "the probe's success closed the circuit"


async def test_retrieval_gets_its_budget_cut_short_by_the_client_s_deadline(
    scripted: ScriptedMesh, upstreams: Upstreams
) -> None:
    gateway = Orchestrator(upstreams)  # retrieval budget 3 s
    assert await _ask(gateway, gateway_pb2.GatewayRequest(question="q?"), time_remaining=1.0) == ANSWER
    short = gateway_pb2.GatewayRequest(question="q?", retrieval=gateway_pb2.RetrievalOptions(timeout_ms=200))
    assert await _ask(gateway, short, time_remaining=30.0) == ANSWER
    assert isinstance(scripted.retrieval, TimedRetrieval)
    by_deadline, by_budget = scripted.retrieval.time_remaining
    # Its share of the client's 1 s (half of it), not all of it: inference keeps the rest.
    share_s = 1.0 * DEADLINE_SHARE - DEADLINE_MARGIN_S
    assert by_deadline is not None and share_s - 0.2 < by_deadline <= share_s + ENCODING_S, by_deadline
    assert by_budget is not None and 0.1 < by_budget <= 0.2 + ENCODING_S, "the request's own budget is shorter"


async def test_the_tool_calls_get_what_is_left_of_the_client_s_deadline(
    scripted: ScriptedMesh, upstreams: Upstreams
) -> None:
    gateway = Orchestrator(upstreams)  # tools budget 10 s
    request = gateway_pb2.GatewayRequest(
        question="q?", retrieval=NO_RETRIEVAL, tool_calls=[common_pb2.ToolCall(name="lookup")]
    )
    assert await _ask(gateway, request, time_remaining=1.0) == ANSWER
    (invocation,) = scripted.tools.invocations
    share_ms = (1.0 * DEADLINE_SHARE - DEADLINE_MARGIN_S) * 1000
    assert 0 < invocation.timeout_ms <= share_ms, "the 10 s budget gives way to the deadline's share"


async def test_the_embedder_s_info_is_asked_within_the_embed_s_deadline(
    scripted: ScriptedMesh, upstreams: Upstreams
) -> None:
    info = await upstreams.embedder_info(time.monotonic() + 0.5)  # under the metadata calls' own 2 s
    assert info.model == "scripted-embedder"
    assert isinstance(scripted.retrieval, TimedRetrieval)
    (left,) = scripted.retrieval.info_time_remaining
    assert left is not None and left <= 0.5 - DEADLINE_MARGIN_S + ENCODING_S, left
