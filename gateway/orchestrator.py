"""The gateway's pipeline: the pre-inference stages fanned out concurrently, their events folded, then inference.

It works on protobuf messages on purpose: the relay forwards upstream messages without rebuilding them,
which keeps the per-token cost of the gateway low.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from gateway.agent.loop import AgentLoop
from gateway.agent.plan import ALL_TOOLS
from gateway.auth.caller import current_caller, may_call_tool
from gateway.clock import StageClock
from gateway.fan_in import merge
from gateway.metrics import GatewayMetrics
from gateway.policy import ResiliencePolicy
from gateway.request import plan_request
from gateway.stages.context import Stage, StageContext
from gateway.stages.inference import InferenceStage
from gateway.stages.retrieval import RetrievalStage
from gateway.stages.tools import ToolStage
from gateway.upstreams import Upstreams
from genmesh.deadlines import deadline_after
from genmesh.errors import Unavailable
from genmesh.v1 import common_pb2, gateway_pb2, tools_pb2


class Orchestrator:
    """Runs one gateway request end to end: sequences the stages and folds the events they yield."""

    def __init__(self, upstreams: Upstreams, policy: ResiliencePolicy | None = None) -> None:
        policy = policy or ResiliencePolicy()
        self._upstreams = upstreams
        self._budgets = policy.budgets
        self._retrieval = RetrievalStage(policy.budgets.retrieval_s)
        self._tools = ToolStage(policy.budgets.tools_s, policy.tool_attempts)
        self._inference = InferenceStage(policy.generate_attempts, policy.connect_wait_s)
        self._agent = AgentLoop(self._inference, self._tools, policy.budgets)
        self.metrics: GatewayMetrics | None = None
        """What the answers record (set when the gateway serves metrics)."""

    async def answer(
        self,
        request: gateway_pb2.GatewayRequest,
        time_remaining: float | None,
        allowed_tools: frozenset[str] | None = None,
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Stream the events of one answer; raises GenmeshError for failures the client must see.

        Sources, tool results and Degraded events come as the fan-out produces them (or a failed stage fails
        the request, when it set ``require_all_stages``); then the answer's deltas and its Completion.
        ``allowed_tools``: the tools the request may call (empty: all); None: those of the RPC's caller.
        """
        if allowed_tools is None:
            caller = current_caller()
            allowed_tools = caller.allowed_tools if caller is not None else frozenset()
        clock = StageClock()
        deadline = deadline_after(time_remaining)
        stage_deadline = self._budgets.stage_deadline(deadline, time.monotonic())
        names = {call.name for call in request.tool_calls if may_call_tool(allowed_tools, call.name)}
        schemas = await self._upstreams.tool_schemas(names) if names else {}
        if schemas is not None and allowed_tools:  # unknown-tool errors list only the tools the key may call
            schemas = {name: schema for name, schema in schemas.items() if name in allowed_tools}
        specs = await self._tool_specs(request) if request.tools else None
        plan = plan_request(request, schemas, self._upstreams.unverifiable_tool_prefixes, allowed_tools, specs)
        metrics = self.metrics
        context = StageContext(self._upstreams, plan, clock, deadline, stage_deadline, metrics=metrics)

        fan_out: list[Stage] = []
        if plan.retrieval_enabled:
            fan_out.append(self._retrieval)
        if plan.tool_calls:
            fan_out.append(self._tools)
        async for event in merge(*(stage.run(context) for stage in fan_out)):
            if event.HasField("degraded"):
                context.degrade(event.degraded)
            else:
                context.gathered.fold(event)
            yield event

        pre_inference_ms = clock.now_ms()
        ttft_ms = 0.0
        tokens = 0
        answer = self._agent.run(context) if plan.agent is not None else self._inference.run(context)
        try:
            async for event in answer:
                if event.HasField("delta"):
                    if metrics is not None:
                        tokens += len(event.delta.token_ids)
                    if not ttft_ms:
                        ttft_ms = clock.now_ms()
                        if metrics is not None:
                            metrics.first_token(ttft_ms / 1000.0)
                elif event.HasField("complete"):
                    event.complete.degraded.extend(context.gathered.degraded)
                    _fill_timings(event.complete.timings, clock, pre_inference_ms, ttft_ms)
                yield event
        finally:
            if metrics is not None:
                metrics.relayed(tokens)  # once per answer, not per token: also those of a stream cut short

    async def _tool_specs(self, request: gateway_pb2.GatewayRequest) -> dict[str, tools_pb2.ToolSpec] | None:
        """The tools service's tools a request's ``tools`` name (all of them for "*"); Unavailable when it cannot
        list them (the model could not be told what they take)."""
        names = {tool.server_tool for tool in request.tools if tool.WhichOneof("kind") == "server_tool"}
        if not names:
            return {}
        specs = await self._upstreams.tool_specs(None if ALL_TOOLS in names else names)
        if specs is None:
            raise Unavailable("the tools service could not list its tools, which the request's tools name")
        return specs


def _fill_timings(timings: common_pb2.Timings, clock: StageClock, pre_inference_ms: float, ttft_ms: float) -> None:
    timings.retrieval_ms = clock.span_ms("retrieval")
    timings.tools_ms = clock.union_ms("tool:")  # the time some call ran: a loop's steps' calls, not the gaps
    timings.pre_inference_ms = pre_inference_ms
    timings.time_to_first_token_ms = ttft_ms
    timings.total_ms = clock.now_ms()
    for key, (start, end) in clock.spans.items():
        call_id = key.removeprefix("tool:") if key.startswith("tool:") else ""
        stage = key.partition("#")[0]  # an agent loop step's "inference#<step>"
        timings.stages.add(stage=stage, start_ms=start, end_ms=end, step=clock.steps.get(key, 0), call_id=call_id)
