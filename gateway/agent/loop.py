"""The agent loop: generate, check the model's calls, run the server tools' calls concurrently, feed the results
back, until the model answers without calls, calls a client function, or runs out of steps.

Per step the events are: the model's deltas and tool_call events (ids made here, executor GATEWAY or CLIENT), then
step_end (the step's finish reason and usage), then the step's tool_results (completion order), each failed one
with a Degraded event; the stream ends with one Completion: usage summed over the steps, the last step's finish
reason (TOOL_CALLS when it ended on client calls).

Every step goes through the inference stage's machinery (replica choice, retries before the first message, abort
on cancel) with what is left of the request's deadline; each step's calls through the tool stage (per-call
timeouts, idempotent retries, the tool budget within a share of what is left, as the request's own calls).
Cancelling the request cancels whichever of the two runs (the caller's task is cancelled where it awaits).

The conversation only grows: step 1's messages (system turn, passages, the client's turns) stay as they are, and
each step appends its assistant turn and its ROLE_TOOL messages, so inference's prefix cache serves the earlier
steps' tokens. Before a step, a conversation past the model's context has the newest results cut (gateway.agent.fit).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import grpc

from gateway.agent.calls import (
    ModelCall,
    call_plan,
    check_call,
    new_call_id,
    rejected,
)
from gateway.agent.fit import declarations_text, fit_results
from gateway.agent.plan import AgentPlan
from gateway.deadlines import StageBudgets
from gateway.stages.context import StageContext
from gateway.stages.inference import InferenceStage
from gateway.stages.tools import ToolStage
from genmesh.errors import FailedPrecondition, FieldViolation, GenmeshError, InvalidArgument, Unavailable, quote
from genmesh.status import code_of_value
from genmesh.tool_messages import assistant_turn, tool_result_content, tool_turn
from genmesh.v1 import common_pb2, gateway_pb2, inference_pb2


class AgentLoop:
    """Runs the agent loop of requests with tools over the inference and tool stages."""

    def __init__(self, inference: InferenceStage, tools: ToolStage, budgets: StageBudgets) -> None:
        self._inference = inference
        self._tools = tools
        self._budgets = budgets

    async def run(self, context: StageContext) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Stream the loop's events; the last is the Completion (timings are the orchestrator's to fill)."""
        agent = context.plan.agent
        assert agent is not None
        reserve = declarations_text(agent)
        messages, shifted = await self._inference.prompt(context, reserve)
        usage = common_pb2.Usage()
        queue_ms = 0.0
        last = common_pb2.Completion()
        finish: common_pb2.FinishReason.ValueType = common_pb2.FINISH_REASON_UNSPECIFIED
        newest = len(messages)  # where the newest step's ROLE_TOOL messages start: the only ones a fit may cut
        for step in range(1, agent.max_steps + 1):
            if step > 1:
                prior = last.usage.prompt_tokens + last.usage.completion_tokens
                await fit_results(self._inference.budget, context, messages, newest, reserve, prior)
            request = self._request(context, agent, messages, step)
            text: list[str] = []
            calls: list[ModelCall] = []
            completed: common_pb2.Completion | None = None
            try:
                async with aclosing(self._inference.generate(context, request, shifted, step)) as generation:
                    async for event in generation:
                        kind = event.WhichOneof("event")
                        if kind == "delta":
                            text.append(event.delta.text)
                        elif kind == "tool_call":
                            event.tool_call.call.call_id = new_call_id()
                            allowed = agent.tool_choice.allowed_tool_names
                            model_call = check_call(event.tool_call.call, agent.tools, allowed)
                            event.tool_call.executor = model_call.executor
                            calls.append(model_call)
                        else:
                            completed = event.complete
                            continue
                        yield event
            except InvalidArgument as refused:
                raise declarations_error(agent, refused) from None
            if completed is None:
                raise Unavailable(f"inference ended step {step} without a completion")
            last = completed
            _add(usage, last.usage)
            queue_ms += last.timings.queue_ms
            finish = common_pb2.FINISH_REASON_TOOL_CALLS if calls else last.finish_reason
            ended = gateway_pb2.StepEnd(step=step, finish_reason=finish, usage=last.usage)
            _time_unrun_calls(context, calls, step)
            yield gateway_pb2.GatewayEvent(step_end=ended)
            if not calls:
                break
            results: dict[str, common_pb2.ToolResult] = {}
            async with aclosing(self._run_calls(context, calls, step)) as running:
                async for event in running:
                    if event.HasField("tool_result"):
                        results[event.tool_result.call_id] = event.tool_result
                    yield event
            messages.append(assistant_turn("".join(text), (c.call for c in calls)))
            newest = len(messages)
            answered = [c.call.call_id for c in calls if c.call.call_id in results]
            messages.extend(tool_turn(i, tool_result_content(results[i])) for i in answered)
            if any(c.by_client for c in calls):
                break
        complete = common_pb2.Completion()
        complete.CopyFrom(last)
        complete.usage.CopyFrom(usage)
        complete.timings.queue_ms = queue_ms
        complete.finish_reason = finish
        yield gateway_pb2.GatewayEvent(complete=complete)

    def _request(
        self, context: StageContext, agent: AgentPlan, messages: list[common_pb2.ChatMessage], step: int
    ) -> inference_pb2.GenerateRequest:
        plan = context.plan
        request = inference_pb2.GenerateRequest(
            messages=messages,
            sampling=plan.sampling_proto,
            truncate_prompt=True,
            response_format=plan.response_format,
            tools=agent.declarations(),
            tool_choice=agent.choice(step),
        )
        if agent.parallel_tool_calls is not None:
            request.parallel_tool_calls = agent.parallel_tool_calls
        return request

    async def _run_calls(
        self, context: StageContext, calls: list[ModelCall], step: int
    ) -> AsyncGenerator[gateway_pb2.GatewayEvent, None]:
        """The step's results: the rejected calls' at once, then the server calls' as they finish; a Degraded per
        failed call (which fails the request under require_all_stages)."""
        events: list[gateway_pb2.GatewayEvent] = []
        for model_call in calls:
            if model_call.mistake is not None:
                events.extend(rejected(model_call))
        for event in events:
            _fold(context, event)
            yield event
        server = [call_plan(i, c.call) for i, c in enumerate(calls) if c.mistake is None and c.tool and c.tool.server]
        if not server:
            return
        stage_deadline = self._budgets.stage_deadline(context.deadline, time.monotonic())
        async with aclosing(self._tools.invoke(context, server, stage_deadline, step)) as results:
            async for event in results:
                _fold(context, event)
                yield event


def _fold(context: StageContext, event: gateway_pb2.GatewayEvent) -> None:
    """A failed call's Degraded: kept, or the request's failure under require_all_stages. A call's INVALID_ARGUMENT
    is the model's mistake (it wrote the arguments), never a field the client sent: FAILED_PRECONDITION then."""
    if not event.HasField("degraded"):
        return
    fault = event.degraded
    failure = None
    if code_of_value(fault.status.code) == grpc.StatusCode.INVALID_ARGUMENT:
        failure = FailedPrecondition(f"{fault.stage} failed: {fault.status.message}")
    context.degrade(fault, failure)


def declarations_error(agent: AgentPlan, refused: InvalidArgument) -> GenmeshError:
    """Inference's refusal of a step, as the client's request names it: its ``tools[k]`` is inference's k-th
    declaration (after "*" expanded), renamed to the request's field (AgentPlan.client_field); a server tool's
    declaration refused is not the client's doing: FAILED_PRECONDITION naming the tool."""
    declared = list(agent.tools.values())
    for violation in refused.violations:
        index = violation.field.removeprefix("tools[").partition("]")[0]
        if violation.field.startswith("tools[") and index.isdigit() and int(index) < len(declared):
            tool = declared[int(index)]
            if tool.server:
                return FailedPrecondition(
                    f"inference refused the server tool {quote(tool.name)}: {violation.description}"
                )
    return InvalidArgument([FieldViolation(agent.client_field(v.field), v.description) for v in refused.violations])


def _time_unrun_calls(context: StageContext, calls: list[ModelCall], step: int) -> None:
    """A zero-length ``tool:<call_id>`` span at the step's end for each call the gateway does not run (rejected,
    or the client's), so that every call of the step has its span."""
    now = context.clock.now_ms()
    for model_call in calls:
        if model_call.mistake is not None or model_call.by_client:
            key = f"tool:{model_call.call.call_id}"
            context.clock.spans[key] = (now, now)
            context.clock.steps[key] = step


def _add(total: common_pb2.Usage, usage: common_pb2.Usage) -> None:
    total.prompt_tokens += usage.prompt_tokens
    total.completion_tokens += usage.completion_tokens
    total.cached_tokens += usage.cached_tokens
