"""The gateway's stage spans, exported by the real OpenTelemetry SDK to a real OTLP receiver from a gateway served
in-process (tests/gateway/served.py): one Generate has gateway.retrieval, gateway.tools, gateway.prompt and
gateway.inference under its server span, in the order they ran, each upstream call's CLIENT span under the stage
that made it; a degraded stage's span says so; the stage latency metric and the span share their clock points;
a stage outside any trace makes no span."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from inprocess import Fault, ScriptedTool
from opentelemetry import trace
from served import ServedGateway, served_gateway
from support.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver
from support.scrape import value

from gateway.stages.span import CODE_ATTRIBUTE, DEGRADED_ATTRIBUTE, StageSpan
from genmesh import tracing
from genmesh.tracing import TraceSettings
from genmesh.v1 import common_pb2, gateway_pb2

GENERATE = "genmesh.v1.GatewayService/Generate"
STAGES = ("gateway.retrieval", "gateway.tools", "gateway.prompt", "gateway.inference")
#: Each upstream call the first answer makes, and the span it belongs under ("" the server span).
CALLS = {
    "genmesh.v1.ToolsService/ListTools": "",
    "genmesh.v1.RetrievalService/Query": "gateway.retrieval",
    "genmesh.v1.ToolsService/InvokeMany": "gateway.tools",
    "genmesh.v1.InferenceService/CountTokens": "gateway.prompt",  # UNIMPLEMENTED by the scripted replica
    "genmesh.v1.InferenceService/GetModelInfo": "gateway.prompt",  # so the budget is guessed from the context
    "genmesh.v1.InferenceService/Generate": "gateway.inference",
}


@asynccontextmanager
async def traced_gateway(
    tmp_path: Path, *tools: ScriptedTool, metrics: bool = False
) -> AsyncIterator[tuple[ServedGateway, OtlpReceiver]]:
    """A gateway whose process traces to a receiver (installed before it starts: its channels are traced)."""
    async with running_receiver() as receiver:
        tracing.install("gateway", TraceSettings(receiver.endpoint))
        try:
            async with served_gateway(tmp_path, *tools, metrics=metrics) as served:
                yield served, receiver
        finally:
            await asyncio.to_thread(tracing.shutdown)  # the receiver must still listen


async def trace_of_one_answer(served: ServedGateway, receiver: OtlpReceiver, *tools: str) -> dict[str, ReceivedSpan]:
    """The spans of one Generate's trace by name (each name once), once exported."""
    calls = [common_pb2.ToolCall(call_id=f"c{i}", name=name) for i, name in enumerate(tools)]
    events = await served.answer(gateway_pb2.GatewayRequest(question="What does yield do?", tool_calls=calls))
    assert events[-1].HasField("complete")
    assert await asyncio.to_thread(tracing.flush)
    servers = [s for s in receiver.spans if s.name == GENERATE and s.kind == "SERVER"]
    assert len(servers) == 1, [s.name for s in receiver.spans]
    spans = receiver.traces()[servers[0].trace_id]
    by_name = {span.name: span for span in spans}
    assert len(by_name) == len(spans), sorted(span.name for span in spans)
    return by_name


async def test_stages_nest_under_the_server_span_and_calls_under_their_stage_in_time_order(tmp_path: Path) -> None:
    async with traced_gateway(tmp_path, ScriptedTool("lookup")) as (served, receiver):
        spans = await trace_of_one_answer(served, receiver, "lookup")
    server = spans[GENERATE]
    assert set(spans) == {GENERATE, *STAGES, *CALLS}
    for name in STAGES:
        stage = spans[name]
        assert (stage.parent_span_id, stage.kind, stage.service) == (server.span_id, "INTERNAL", "genmesh-gateway")
        assert stage.status == "UNSET", name
        assert server.start_ns <= stage.start_ns <= stage.end_ns <= server.end_ns, name
    for name, parent in CALLS.items():
        call, owner = spans[name], spans[parent or GENERATE]
        assert (call.kind, call.parent_span_id) == ("CLIENT", owner.span_id), name
        assert owner.start_ns <= call.start_ns <= owner.end_ns, f"{name} starts inside {owner.name}"
    retrieval, tools, prompt, inference = (spans[name] for name in STAGES)
    assert max(retrieval.end_ns, tools.end_ns) <= prompt.start_ns, "the prompt waits for both fan-out stages"
    assert prompt.end_ns <= inference.start_ns
    assert spans["genmesh.v1.ToolsService/ListTools"].start_ns <= min(retrieval.start_ns, tools.start_ns)


async def test_a_degraded_stage_is_an_error_span_with_its_code(tmp_path: Path) -> None:
    async with traced_gateway(tmp_path, ScriptedTool("notify")) as (served, receiver):
        served.upstreams.tools.stream_fault = Fault(grpc.StatusCode.UNAVAILABLE, "tools are down")
        spans = await trace_of_one_answer(served, receiver, "notify")
    tools = spans["gateway.tools"]
    assert tools.status == "ERROR"
    assert tools.attributes[CODE_ATTRIBUTE] == "UNAVAILABLE"
    assert tools.attributes[DEGRADED_ATTRIBUTE] is True
    assert spans["genmesh.v1.ToolsService/InvokeMany"].parent_span_id == tools.span_id
    for name in ("gateway.retrieval", "gateway.inference", GENERATE):
        assert spans[name].status == "UNSET", f"{name}: the answer went on without the tools"
        assert CODE_ATTRIBUTE not in spans[name].attributes


async def test_the_stage_latency_is_the_span_duration(tmp_path: Path) -> None:
    async with traced_gateway(tmp_path, ScriptedTool("lookup"), metrics=True) as (served, receiver):
        served.replicas.replicas[0].servicer.delta_delay_s = 0.02
        before = await served.scrape()
        spans = await trace_of_one_answer(served, receiver, "lookup")
        after = await served.scrape()
    for stage in ("retrieval", "tools", "inference"):
        span = spans[f"gateway.{stage}"]
        observed = value(after, "genmesh_gateway_stage_duration_seconds_sum", stage=stage) - value(
            before, "genmesh_gateway_stage_duration_seconds_sum", stage=stage
        )
        assert observed == pytest.approx((span.end_ns - span.start_ns) / 1e9, abs=1e-6), stage


async def test_a_stage_makes_a_span_only_inside_a_trace() -> None:
    assert StageSpan("retrieval").span is trace.INVALID_SPAN, "tracing off: no span"
    async with running_receiver() as receiver:
        tracing.install("gateway", TraceSettings(receiver.endpoint))
        try:
            outside = StageSpan("retrieval")  # no span current: no trace of its own
            with tracing.tracer().start_as_current_span("job.run") as parent:  # as every job run has
                with StageSpan("retrieval") as inside, inside.current():
                    assert trace.get_current_span() is inside.span
                assert trace.get_current_span() is parent, "current only inside the block"
            outside.end()
            assert await asyncio.to_thread(tracing.flush)
        finally:
            await asyncio.to_thread(tracing.shutdown)
    assert outside.span is trace.INVALID_SPAN
    names = {span.name: span for span in receiver.spans}
    assert set(names) == {"job.run", "gateway.retrieval"}
    assert names["gateway.retrieval"].parent_span_id == names["job.run"].span_id
