"""The gateway's pipeline: the pre-inference stages fanned out concurrently, their events folded, then inference.

It works on protobuf messages on purpose: the relay forwards upstream messages without rebuilding them,
which keeps the per-token cost of the gateway low.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from gateway.auth.caller import current_caller
from gateway.clock import StageClock
from gateway.fan_in import merge
from gateway.metrics import GatewayMetrics
from gateway.policy import ResiliencePolicy
from gateway.request import may_call_tool, plan_request
from gateway.stages.context import Stage, StageContext
from gateway.stages.inference import InferenceStage
from gateway.stages.retrieval import RetrievalStage
from gateway.stages.tools import ToolStage
from gateway.upstreams import Upstreams
from genmesh.deadlines import deadline_after
from genmesh.status import error_from_status
from genmesh.v1 import common_pb2, gateway_pb2


class Orchestrator:
    """Runs one gateway request end to end: sequences the stages and folds the events they yield."""

    def __init__(self, upstreams: Upstreams, policy: ResiliencePolicy | None = None) -> None:
        policy = policy or ResiliencePolicy()
        self._upstreams = upstreams
        self._budgets = policy.budgets
        self._retrieval = RetrievalStage(policy.budgets.retrieval_s)
        self._tools = ToolStage(policy.budgets.tools_s, policy.tool_attempts)
        self._inference = InferenceStage(policy.generate_attempts, policy.connect_wait_s)
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
        plan = plan_request(request, schemas, self._upstreams.unverifiable_tool_prefixes, allowed_tools)
        metrics = self.metrics
        context = StageContext(self._upstreams, plan, clock, deadline, stage_deadline, metrics=metrics)

        fan_out: list[Stage] = []
        if plan.retrieval_enabled:
            fan_out.append(self._retrieval)
        if plan.tool_calls:
            fan_out.append(self._tools)
        async for event in merge(*(stage.run(context) for stage in fan_out)):
            context.gathered.fold(event)
            if event.HasField("degraded") and plan.require_all_stages:
                fault = event.degraded
                raise error_from_status(fault.status, f"{fault.stage} failed: {fault.status.message}")
            if metrics is not None and event.HasField("degraded"):
                metrics.degraded(event.degraded)
            yield event

        pre_inference_ms = clock.now_ms()
        ttft_ms = 0.0
        tokens = 0
        try:
            async for event in self._inference.run(context):
                if event.HasField("delta"):
                    if metrics is not None:
                        tokens += len(event.delta.token_ids)
                    if not ttft_ms:
                        ttft_ms = clock.now_ms()
                        if metrics is not None:
                            metrics.first_token(ttft_ms / 1000.0)
                else:
                    event.complete.degraded.extend(context.gathered.degraded)
                    _fill_timings(event.complete.timings, clock, pre_inference_ms, ttft_ms)
                yield event
        finally:
            if metrics is not None:
                metrics.relayed(tokens)  # once per answer, not per token: also those of a stream cut short


def _fill_timings(timings: common_pb2.Timings, clock: StageClock, pre_inference_ms: float, ttft_ms: float) -> None:
    timings.retrieval_ms = clock.span_ms("retrieval")
    timings.tools_ms = clock.span_ms("tool:")
    timings.pre_inference_ms = pre_inference_ms
    timings.time_to_first_token_ms = ttft_ms
    timings.total_ms = clock.now_ms()
    for stage, (start, end) in clock.spans.items():
        timings.stages.add(stage=stage, start_ms=start, end_ms=end)
