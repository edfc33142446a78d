"""The agent loop's stage spans, exported by the real OpenTelemetry SDK to a real OTLP receiver from a gateway
served in-process: one gateway.inference span per step and one gateway.tools span per step with calls, each
tagged with its step, the upstream calls under the stage that made them, in the order the loop ran them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from inprocess import ScriptedTool
from served import ServedGateway, served_gateway
from support.otlp_receiver import OtlpReceiver, running_receiver

from gateway.stages.span import STEP_ATTRIBUTE
from genmesh import tracing
from genmesh.tracing import TraceSettings
from genmesh.v1 import common_pb2, gateway_pb2

GENERATE = "genmesh.v1.GatewayService/Generate"


@asynccontextmanager
async def traced_gateway(tmp_path: Path) -> AsyncIterator[tuple[ServedGateway, OtlpReceiver]]:
    """A gateway whose process traces to a receiver (installed before it starts: its channels are traced)."""
    async with running_receiver() as receiver:
        tracing.install("gateway", TraceSettings(receiver.endpoint))
        try:
            async with served_gateway(tmp_path, ScriptedTool("lookup")) as served:
                yield served, receiver
        finally:
            await asyncio.to_thread(tracing.shutdown)  # the receiver must still listen


async def test_each_step_has_its_inference_span_and_its_tools_span(tmp_path: Path) -> None:
    async with traced_gateway(tmp_path) as (served, receiver):
        served.replicas.replicas[0].servicer.tool_calls = [[common_pb2.ToolCall(name="lookup", arguments_json="{}")]]
        request = gateway_pb2.GatewayRequest(
            question="q?", retrieval=gateway_pb2.RetrievalOptions(disabled=True), max_steps=2
        )
        request.tools.add(server_tool="lookup")
        events = await served.answer(request)
        assert events[-1].HasField("complete")
        assert await asyncio.to_thread(tracing.flush)
    (server,) = [s for s in receiver.spans if s.name == GENERATE and s.kind == "SERVER"]
    spans = sorted(receiver.traces()[server.trace_id], key=lambda s: s.start_ns)
    stages = [(s.name, s.attributes.get(STEP_ATTRIBUTE)) for s in spans if s.parent_span_id == server.span_id]
    assert [stage for stage in stages if stage[0] != "genmesh.v1.ToolsService/ListTools"] == [
        ("gateway.prompt", None),
        ("gateway.inference", 1),
        ("gateway.tools", 1),
        ("gateway.inference", 2),
    ]
    by_id = {s.span_id: s for s in spans}
    parents = {s.name: by_id[s.parent_span_id].name for s in spans if s.kind == "CLIENT" and s.parent_span_id in by_id}
    assert parents["genmesh.v1.ToolsService/InvokeMany"] == "gateway.tools"
    generates = [
        by_id[s.parent_span_id].attributes.get(STEP_ATTRIBUTE)
        for s in spans
        if s.name.endswith("/Generate") and s.kind == "CLIENT"
    ]
    assert generates == [1, 2]
