"""The inference stage: the conversation (gateway.prompt: what the earlier stages found, then the client's turns),
rendered by inference with the model's chat template, then the relayed token stream.

Each attempt goes to the inference replica the pool chooses (the least loaded healthy one, by default). A
Generate call that fails with UNAVAILABLE before its first message is tried again on another replica (after
waiting for its channel to connect, then the guard's back-off) while attempts and time remain; once a message
has been relayed it never is, and the failure goes to the client. When every replica's circuit is open, calls
are refused at once with UNAVAILABLE. A request cancelled mid-stream is also aborted on its replica.

Each attempt goes with an id of its own (``attempt_id``: the client's id and a random suffix), so that two
requests that share a client's id never abort each other nor are refused by a replica for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from gateway.balancing.pool import attempt_id
from gateway.prompt import PromptPassage, PromptToolResult, client_field
from gateway.prompt_budget import PromptBudget
from gateway.relay import relay
from gateway.resilience import RetryRule
from gateway.stages.context import StageContext
from gateway.stages.span import StageSpan
from genmesh.deadlines import left_s, timeout
from genmesh.status import from_rpc_error
from genmesh.tool_messages import tool_result_content
from genmesh.v1 import common_pb2, gateway_pb2, inference_pb2

STAGE = "inference"
PROMPT = "prompt"


class InferenceStage:
    """Generates the answer; yields a GatewayEvent per relayed delta (and per tool_call, as a ToolCallEvent with
    its call id left empty, when the request has tools), then the Completion, each sample's (n > 1) tagged with its
    ``index``; the stream ends after the last sample's Completion."""

    def __init__(self, attempts: int, connect_wait_s: float) -> None:
        self._rule = RetryRule(attempts)
        self._connect_wait_s = connect_wait_s
        self._budget = PromptBudget(self._rule, connect_wait_s)

    async def run(self, context: StageContext) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Stream the answer; raises GenmeshError for failures the client must see. Its span runs from when
        the prompt is ready to the Completion. Traced as the stages ``prompt`` (building it, the model's context
        length asked on first use) then ``inference`` (timed too, over the same span)."""
        messages, shifted = await self.prompt(context)
        request = inference_pb2.GenerateRequest(
            messages=messages,
            sampling=context.plan.sampling_proto,
            truncate_prompt=True,
            response_format=context.plan.response_format,
        )
        async for event in self.generate(context, request, shifted):
            yield event

    async def prompt(self, context: StageContext, reserve: str = "") -> tuple[list[common_pb2.ChatMessage], bool]:
        """The conversation (gateway.prompt_budget) and whether a system message went before the client's;
        ``reserve``: a text the prompt also holds (the tools' declarations), counted against the context. Traced as
        the stage ``prompt``."""
        with StageSpan(PROMPT) as prompt_span, prompt_span.current():  # no yield inside: it may stay current
            return await self._conversation(context, reserve)

    @property
    def budget(self) -> PromptBudget:
        """What fits conversations to the model's context (and counts their tokens)."""
        return self._budget

    async def generate(
        self, context: StageContext, request: inference_pb2.GenerateRequest, shifted: bool, step: int = 0
    ) -> AsyncGenerator[gateway_pb2.GatewayEvent, None]:
        """Stream one generation of ``request``: deltas, a ToolCallEvent (``step``, call id left empty) per
        tool_call, then the Completion; ``shifted``: a system message went before the client's (its field errors
        are renamed). An agent loop's ``step`` (1..) is timed as the span ``inference#<step>``."""
        asked = not context.plan.messages
        key = f"{STAGE}#{step}" if step else STAGE
        with StageSpan(STAGE, context.latency(STAGE)) as span:  # in this generator: no layer more per token
            span.step(step)
            upstreams, deadline = context.upstreams, context.deadline
            start_ms = context.clock.now_ms()
            connect_until = time.monotonic() + self._connect_wait_s  # one reconnect wait per request, not per attempt
            try:
                async for attempt in upstreams.guard(STAGE, self._rule).attempts(deadline, "Generate"):
                    replica = upstreams.inference.replicas[attempt.target.name]
                    request.request_id = attempt_id(context.plan.request_id)
                    with attempt, upstreams.inference.serving(replica, request.request_id):
                        await replica.ensure_connected(min(left_s(connect_until), left_s(deadline)))
                        with span.current():
                            call = replica.stub.Generate(request, timeout=timeout(deadline))
                        try:
                            async for message in relay(call):
                                attempt.commit()
                                if message.HasField("delta"):
                                    yield gateway_pb2.GatewayEvent(delta=message.delta, index=message.index)
                                elif message.HasField("tool_call"):
                                    called = gateway_pb2.ToolCallEvent(step=step, call=message.tool_call)
                                    yield gateway_pb2.GatewayEvent(tool_call=called)
                                else:
                                    context.clock.spans[key] = (start_ms, context.clock.now_ms())
                                    if step:
                                        context.clock.steps[key] = step
                                    span.end()
                                    yield gateway_pb2.GatewayEvent(complete=message.complete, index=message.index)
                        except (asyncio.CancelledError, GeneratorExit):
                            upstreams.inference.abort_soon(request.request_id)  # while it still maps to the replica
                            raise
                        return
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error, lambda name: client_field(name, asked, shifted)) from None

    async def _conversation(self, context: StageContext, reserve: str) -> tuple[list[common_pb2.ChatMessage], bool]:
        plan, gathered = context.plan, context.gathered
        calls = {call.call_id: call for call in plan.tool_calls}
        order = {call_id: index for index, call_id in enumerate(calls)}
        # The calls' order, not the order they finished in: the same request renders the same prompt (prefix cache).
        results = sorted(gathered.tool_results, key=lambda r: order[r.call_id])
        return await self._budget.conversation(
            context.upstreams,
            plan.question,
            plan.messages,
            [PromptPassage(p.title, p.text) for p in gathered.passages],
            [
                PromptToolResult(r.name, calls[r.call_id].arguments_json, tool_result_content(r))  # as the loop's
                for r in results
            ],
            plan.sampling.max_tokens,
            context.deadline,
            reserve,
        )
