"""The tool results reach the prompt in the order the client listed the calls, not in the order they finished: the
same request always renders the same prompt, so its context is served from inference's prefix cache."""

from __future__ import annotations

from inprocess import ScriptedTool, start_scripted_mesh

from gateway.orchestrator import Orchestrator
from gateway.policy import ResiliencePolicy
from gateway.upstreams import Upstreams
from genmesh.messages import message_text
from genmesh.v1 import common_pb2, gateway_pb2


async def test_tool_results_are_laid_out_in_the_calls_order_whichever_finishes_first() -> None:
    scripted = await start_scripted_mesh(
        ScriptedTool("slow", result_json='{"slow": 1}', delay_s=0.3), ScriptedTool("fast", result_json='{"fast": 2}')
    )
    upstreams = Upstreams(scripted.targets())
    try:
        request = gateway_pb2.GatewayRequest(
            request_id="r-order",
            question="Which came first?",
            tool_calls=[common_pb2.ToolCall(name="slow"), common_pb2.ToolCall(name="fast")],
            retrieval=gateway_pb2.RetrievalOptions(disabled=True),
            sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0),
        )
        events = [event async for event in Orchestrator(upstreams, ResiliencePolicy()).answer(request, 5.0)]
    finally:
        await upstreams.close()
        await scripted.stop()
    finished = [event.tool_result.name for event in events if event.HasField("tool_result")]
    assert finished == ["fast", "slow"], "the fast tool's result streams first"
    (generate,) = scripted.inference.requests
    system = message_text(generate.messages[0])
    assert system == 'Tool slow({}) returned: {"slow": 1}\nTool fast({}) returned: {"fast": 2}'
