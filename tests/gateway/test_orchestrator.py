"""The orchestrator over real in-process upstreams: event order, concurrent fan-out, degradation, retries, circuits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from inprocess import Fault, ScriptedMesh, ScriptedTool, start_scripted_mesh

from gateway.circuit import CircuitConfig
from gateway.orchestrator import Orchestrator
from gateway.policy import GENERATE_ATTEMPTS, ResiliencePolicy
from gateway.upstreams import Upstreams
from genmesh.errors import GenmeshError, InvalidArgument, Reason, ResourceExhausted, Unavailable
from genmesh.status import code_value, status_code_of
from genmesh.v1 import common_pb2, gateway_pb2

Request = gateway_pb2.GatewayRequest
Call = common_pb2.ToolCall
NO_RETRIEVAL = gateway_pb2.RetrievalOptions(disabled=True)
ANSWER = "Generators yield values."

MakeGateway = Callable[..., Orchestrator]


@dataclass
class Answer:
    """What the client of one ``answer`` saw: its events, then the error it ended with (if any)."""

    events: list[gateway_pb2.GatewayEvent] = field(default_factory=list)
    error: GenmeshError | None = None
    wall_s: float = 0.0

    @property
    def kinds(self) -> list[str]:
        return [str(event.WhichOneof("event")) for event in self.events]

    @property
    def text(self) -> str:
        return "".join(event.delta.text for event in self.events if event.HasField("delta"))

    @property
    def degraded(self) -> list[common_pb2.Degraded]:
        return [event.degraded for event in self.events if event.HasField("degraded")]

    @property
    def tool_results(self) -> list[common_pb2.ToolResult]:
        return [event.tool_result for event in self.events if event.HasField("tool_result")]

    @property
    def completion(self) -> common_pb2.Completion:
        assert self.error is None, self.error
        assert self.kinds and self.kinds[-1] == "complete", self.kinds
        return self.events[-1].complete


async def ask(gateway: Orchestrator, request: Request, time_remaining: float | None = 5.0) -> Answer:
    answer = Answer()
    started = time.perf_counter()
    try:
        async for event in gateway.answer(request, time_remaining):
            answer.events.append(event)
    except GenmeshError as error:
        answer.error = error
    answer.wall_s = time.perf_counter() - started
    return answer


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedMesh]:
    running = await start_scripted_mesh(
        ScriptedTool("lookup", result_json='{"value": 42}', idempotent=True),
        ScriptedTool("notify", result_json='{"sent": true}', idempotent=False),
    )
    yield running
    await running.stop()


@pytest.fixture
async def make_gateway(scripted: ScriptedMesh) -> AsyncIterator[MakeGateway]:
    """Orchestrators over real Upstreams to the scripted mesh, each with fresh channels and circuit breakers."""
    opened: list[Upstreams] = []

    def make(circuit: CircuitConfig | None = None, generate_attempts: int = GENERATE_ATTEMPTS) -> Orchestrator:
        config = circuit or CircuitConfig()
        upstreams = Upstreams(scripted.targets(), config)
        opened.append(upstreams)
        return Orchestrator(upstreams, ResiliencePolicy(circuit=config, generate_attempts=generate_attempts))

    yield make
    for upstreams in opened:
        await upstreams.close()


async def test_fan_out_events_come_before_the_answer_and_the_completion_last(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    request = Request(request_id="r-1", question="What does yield do?", tool_calls=[Call(call_id="w", name="lookup")])
    answer = await ask(make_gateway(), request)

    assert sorted(answer.kinds[:2]) == ["sources", "tool_result"]
    assert answer.kinds[2:] == ["delta"] * 3 + ["complete"]
    assert answer.text == ANSWER
    assert answer.events[answer.kinds.index("sources")].sources.passages[0].chunk_id == "yield#0"
    completion = answer.completion
    assert list(completion.degraded) == []
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens == len(scripted.inference.prompts[0]) // 3
    timings = completion.timings
    spans = {span.stage: (span.start_ms, span.end_ms) for span in timings.stages}
    assert set(spans) == {"retrieval", "tool:w", "inference"}
    assert all(0 <= start <= end for start, end in spans.values())
    assert spans["retrieval"][1] <= spans["inference"][0] and spans["tool:w"][1] <= spans["inference"][0]
    assert timings.retrieval_ms > 0 and timings.tools_ms > 0
    assert 0 < timings.pre_inference_ms <= timings.time_to_first_token_ms <= timings.total_ms


async def test_retrieval_and_tools_run_concurrently(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    scripted.retrieval.delay_s = 0.3
    scripted.tools.tools["lookup"].delay_s = 0.3
    answer = await ask(gateway, Request(question="q?", tool_calls=[Call(call_id="w", name="lookup")]))
    assert list(answer.completion.degraded) == []
    assert answer.wall_s < 0.55, f"fan-out took {answer.wall_s:.3f} s: sequential, not concurrent"
    spans = {span.stage: (span.start_ms, span.end_ms) for span in answer.completion.timings.stages}
    assert spans["retrieval"][0] < spans["tool:w"][1] and spans["tool:w"][0] < spans["retrieval"][1]


async def test_a_faster_tool_result_arrives_before_the_sources(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    scripted.retrieval.delay_s = 0.3
    scripted.tools.tools["lookup"].delay_s = 0.02
    answer = await ask(make_gateway(), Request(question="q?", tool_calls=[Call(call_id="w", name="lookup")]))
    assert answer.kinds[:2] == ["tool_result", "sources"]


async def test_the_prompt_holds_the_passages_and_the_tool_results(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    request = Request(
        request_id="r-prompt",
        question="What does yield do?",
        tool_calls=[Call(name="lookup", arguments_json='{"q": "yield"}')],
        retrieval=gateway_pb2.RetrievalOptions(top_k=2, collection="docs"),
        sampling=common_pb2.SamplingParams(max_tokens=64, temperature=0.0),
    )
    answer = await ask(make_gateway(), request)
    assert answer.text == ANSWER
    (query,) = scripted.retrieval.requests
    assert (query.request_id, query.text, query.top_k, query.collection) == (
        "r-prompt",
        "What does yield do?",
        2,
        "docs",
    )
    (generate,) = scripted.inference.requests
    assert generate.request_id.startswith("r-prompt."), "each attempt has its own id, starting with the client's"
    assert generate.sampling == request.sampling
    system, user = generate.messages
    assert system.role == common_pb2.ROLE_SYSTEM and user.role == common_pb2.ROLE_USER
    assert scripted.retrieval.passages[0].text in system.content[0].text
    assert system.content[0].text.endswith('Tool lookup({"q": "yield"}) returned: {"value": 42}')
    assert user.content[0].text == "What does yield do?" and not generate.prompt
    assert scripted.inference.prompts[0].endswith("\n\nQuestion: What does yield do?\nAnswer:")


async def test_failed_retrieval_degrades_and_the_answer_goes_on(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    scripted.retrieval.fault = Fault(grpc.StatusCode.UNAVAILABLE, "index offline")
    answer = await ask(make_gateway(), Request(question="q?"))
    assert answer.kinds == ["degraded", "delta", "delta", "delta", "complete"]
    (fault,) = answer.degraded
    assert (fault.stage, fault.code, fault.message) == (
        "retrieval",
        code_value(grpc.StatusCode.UNAVAILABLE),
        "index offline",
    )
    assert list(answer.completion.degraded) == [fault]
    assert "Question: q?" in scripted.inference.prompts[0]


async def test_require_all_stages_fails_with_the_stage_s_code(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    scripted.retrieval.fault = Fault(grpc.StatusCode.UNAVAILABLE, "index offline")
    answer = await ask(make_gateway(), Request(question="q?", require_all_stages=True))
    assert isinstance(answer.error, GenmeshError)
    assert status_code_of(answer.error) == grpc.StatusCode.UNAVAILABLE
    assert "retrieval" in answer.error.message and "index offline" in answer.error.message
    assert "delta" not in answer.kinds
    assert scripted.inference.requests == []


async def test_retrieval_over_its_budget_degrades_and_counts_against_its_circuit(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    gateway = make_gateway(CircuitConfig(failures=1, cooldown_s=30.0))
    scripted.retrieval.delay_s = 0.5
    request = Request(question="q?", retrieval=gateway_pb2.RetrievalOptions(timeout_ms=100))
    first = await ask(gateway, request)
    (late,) = first.degraded
    assert (late.stage, late.code) == ("retrieval", code_value(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert "100 ms budget" in late.message
    assert first.text == ANSWER
    assert len(scripted.retrieval.requests) == 1

    second = await ask(gateway, request)
    (refused,) = second.degraded
    assert (refused.stage, refused.code) == ("retrieval", code_value(grpc.StatusCode.UNAVAILABLE))
    assert "circuit is open" in refused.message
    assert second.text == ANSWER
    assert len(scripted.retrieval.requests) == 1, "an open circuit must not call retrieval"


async def test_retrieval_s_client_mistake_names_the_gateway_field(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    scripted.retrieval.fault = Fault(rich=InvalidArgument.field("text", "is too long for the embedder"))
    answer = await ask(make_gateway(), Request(question="q?"))
    assert isinstance(answer.error, InvalidArgument)
    assert [(v.field, v.description) for v in answer.error.violations] == [("question", "is too long for the embedder")]
    assert scripted.inference.requests == []


async def test_inference_s_client_mistake_names_the_gateway_field(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    scripted.inference.fault = Fault(rich=InvalidArgument.field("prompt", "is longer than the context"))
    answer = await ask(make_gateway(), Request(question="q?", retrieval=NO_RETRIEVAL))
    assert isinstance(answer.error, InvalidArgument)
    assert [v.field for v in answer.error.violations] == ["question"]
    assert len(scripted.inference.requests) == 1, "a client mistake is not retried"


async def test_a_full_inference_queue_reaches_the_client_with_its_reason_and_delay(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    full = ResourceExhausted("the queue is full", retry_after_s=0.25, reason=Reason.INFERENCE_QUEUE_FULL)
    scripted.inference.fault = Fault(rich=full)
    answer = await ask(make_gateway(), Request(question="q?", retrieval=NO_RETRIEVAL))
    assert isinstance(answer.error, ResourceExhausted)
    assert answer.error.reason == "INFERENCE_QUEUE_FULL", "told apart from the gateway's own stream limit"
    assert answer.error.retry_after_s == 0.25
    assert len(scripted.inference.requests) == 1, "RESOURCE_EXHAUSTED is not retried by the gateway"


async def test_generate_is_retried_before_the_first_token(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    scripted.inference.fault = Fault(grpc.StatusCode.UNAVAILABLE, times=1)
    answer = await ask(make_gateway(), Request(question="q?", retrieval=NO_RETRIEVAL))
    assert answer.text == ANSWER
    assert answer.completion.finish_reason == common_pb2.FINISH_REASON_STOP
    assert len(scripted.inference.requests) == 2


async def test_generate_is_not_retried_with_one_attempt(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    scripted.inference.fault = Fault(grpc.StatusCode.UNAVAILABLE, times=1)
    answer = await ask(make_gateway(generate_attempts=1), Request(question="q?", retrieval=NO_RETRIEVAL))
    assert isinstance(answer.error, Unavailable)
    assert answer.kinds == []
    assert len(scripted.inference.requests) == 1


async def test_generate_is_not_retried_after_the_first_token(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    scripted.inference.fault_after_first = Fault(grpc.StatusCode.UNAVAILABLE, "engine died", times=1)
    answer = await ask(make_gateway(), Request(question="q?", retrieval=NO_RETRIEVAL))
    assert answer.kinds == ["delta"]
    assert isinstance(answer.error, GenmeshError)
    assert status_code_of(answer.error) == grpc.StatusCode.UNAVAILABLE
    assert "engine died" in answer.error.message
    assert len(scripted.inference.requests) == 1


async def test_an_idempotent_tool_is_retried_and_a_non_idempotent_one_is_not(
    scripted: ScriptedMesh, make_gateway: MakeGateway
) -> None:
    scripted.tools.stream_fault = Fault(grpc.StatusCode.UNAVAILABLE, "tools restarting", times=1)
    request = Request(
        question="q?",
        retrieval=NO_RETRIEVAL,
        tool_calls=[Call(call_id="a", name="lookup"), Call(call_id="b", name="notify")],
    )
    answer = await ask(make_gateway(), request)
    results = {result.call_id: result for result in answer.tool_results}
    assert results["a"].result_json == '{"value": 42}'
    assert results["b"].error.code == code_value(grpc.StatusCode.UNAVAILABLE)
    (fault,) = answer.degraded
    assert (fault.stage, fault.code) == ("tool:b", code_value(grpc.StatusCode.UNAVAILABLE))
    assert list(answer.completion.degraded) == [fault]
    assert [[call.call_id for call in request.calls] for request in scripted.tools.invocations] == [["a", "b"], ["a"]]


async def test_a_lone_idempotent_tool_is_retried(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    scripted.tools.stream_fault = Fault(grpc.StatusCode.UNAVAILABLE, times=1)
    answer = await ask(make_gateway(), Request(question="q?", retrieval=NO_RETRIEVAL, tool_calls=[Call(name="lookup")]))
    assert [result.result_json for result in answer.tool_results] == ['{"value": 42}']
    assert list(answer.completion.degraded) == []
    assert len(scripted.tools.invocations) == 2


async def test_a_non_idempotent_tool_is_not_retried(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    scripted.tools.stream_fault = Fault(grpc.StatusCode.UNAVAILABLE, "tools restarting", times=1)
    answer = await ask(make_gateway(), Request(question="q?", retrieval=NO_RETRIEVAL, tool_calls=[Call(name="notify")]))
    assert answer.kinds[:2] == ["tool_result", "degraded"]
    (result,) = answer.tool_results
    assert (result.call_id, result.error.code, result.error.message) == (
        "0",
        code_value(grpc.StatusCode.UNAVAILABLE),
        "tools restarting",
    )
    assert [fault.stage for fault in answer.completion.degraded] == ["tool:0"]
    assert answer.text == ANSWER
    assert len(scripted.tools.invocations) == 1


async def test_an_open_inference_circuit_fails_fast(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    gateway = make_gateway(CircuitConfig(failures=1, cooldown_s=30.0))
    scripted.inference.fault = Fault(grpc.StatusCode.INTERNAL, "engine crashed", times=1)
    first = await ask(gateway, Request(question="q?", retrieval=NO_RETRIEVAL))
    assert first.error is not None and status_code_of(first.error) == grpc.StatusCode.INTERNAL
    assert len(scripted.inference.requests) == 1, "INTERNAL is not retried"

    second = await ask(gateway, Request(question="q?", retrieval=NO_RETRIEVAL))
    assert isinstance(second.error, Unavailable)
    assert "circuit is open" in second.error.message
    assert second.wall_s < 0.5
    assert len(scripted.inference.requests) == 1, "an open circuit must not call Generate"


async def test_in_band_errors_carry_their_status(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    scripted.retrieval.fault = Fault(grpc.StatusCode.UNAVAILABLE, "index offline")
    scripted.tools.stream_fault = Fault(grpc.StatusCode.UNAVAILABLE, "tools restarting")
    answer = await ask(make_gateway(), Request(question="q?", tool_calls=[Call(name="notify")]))
    assert len(answer.degraded) == 2
    for fault in answer.degraded:  # common.proto: code and message are deprecated, read status
        assert (fault.status.code, fault.status.message) == (fault.code, fault.message)
    (result,) = answer.tool_results
    assert result.error.status.code == code_value(grpc.StatusCode.UNAVAILABLE)


async def test_tools_on_a_later_list_page_are_known(scripted: ScriptedMesh, make_gateway: MakeGateway) -> None:
    scripted.tools.page_size = 1
    answer = await ask(make_gateway(), Request(question="q?", retrieval=NO_RETRIEVAL, tool_calls=[Call(name="notify")]))
    assert answer.error is None, answer.error
    assert [result.result_json for result in answer.tool_results] == ['{"sent": true}']
