"""The tool stage: the request's tool calls in InvokeMany streams inside the tool budget (and the stages' share of
the client's deadline), results as they arrive.

A call that is the client's mistake (unknown tool, bad arguments) fails the whole request with INVALID_ARGUMENT
naming ``tool_calls[i]...``; any other failure of a call, or of the stream, becomes that call's ToolResult with
an error plus a Degraded event, except that the calls of idempotent tools that failed with UNAVAILABLE are
tried again (a new stream, after the guard's back-off) while attempts and budget remain. Non-idempotent tools
are never retried. A call's span runs from when the tools service started it (measured from when the gateway
sent the stream) to when its result arrived. A call of a tool the caller's key may not call is never sent: it
fails at once, in its own ToolResult (PERMISSION_DENIED, reason TOOL_NOT_ALLOWED), and the others still run.

The agent loop (gateway.agent) runs each step's calls through ``invoke``: there a refusal by the tools service is
the model's mistake, that call's error result, never the request's failure.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

import grpc

from gateway.deadlines import REPORT_GRACE_S, budget_timeout
from gateway.request import ToolCallPlan
from gateway.resilience import Attempt, CircuitOpen, RetryRule
from gateway.stages.context import StageContext, client_mistake, degraded
from gateway.stages.span import StageSpan
from genmesh.deadlines import left_s, timeout
from genmesh.errors import FieldViolation, InvalidArgument, PermissionDenied, Reason
from genmesh.status import code_of_value, code_value, status_message, status_of
from genmesh.v1 import common_pb2, gateway_pb2, tools_pb2

STAGE = "tools"
#: The most characters of a client's tool name quoted in a TOOL_NOT_ALLOWED error.
MAX_QUOTED_NAME = 64


class ToolStage:
    """Runs the tool calls the client asked for."""

    def __init__(self, budget_s: float, attempts: int) -> None:
        self._budget_s = budget_s
        self._rule = RetryRule(attempts)

    async def run(self, context: StageContext) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Yield each ToolResult of the request's own tool calls (and a Degraded per failed call) as it arrives."""
        async for event in self.invoke(context, context.plan.tool_calls, context.stage_deadline):
            yield event

    async def invoke(
        self,
        context: StageContext,
        calls: Sequence[ToolCallPlan],
        stage_deadline: float | None,
        step: int = 0,
    ) -> AsyncGenerator[gateway_pb2.GatewayEvent, None]:
        """Run ``calls`` by ``stage_deadline`` (and the stage's budget); yield each ToolResult (and a Degraded per
        failed call) as it arrives. ``step`` 0: the request's own calls, a client's mistake fails the request;
        an agent loop's step (1..): the model's calls, whose every failure is that call's result. Traced and timed
        as the stage ``tools`` (gateway.stages.span), until the last result."""
        with StageSpan(STAGE, context.latency(STAGE)) as span:
            span.step(step)
            async with aclosing(self._calls(context, span, calls, stage_deadline, step)) as events:
                async for event in events:
                    span.saw(event)
                    yield event

    async def _calls(
        self,
        context: StageContext,
        span: StageSpan,
        calls: Sequence[ToolCallPlan],
        deadline: float | None,
        step: int,
    ) -> AsyncGenerator[gateway_pb2.GatewayEvent, None]:
        limit = timeout(deadline)
        if limit is None or self._budget_s < limit:
            missed = f"the tool calls missed their {self._budget_s * 1000:.0f} ms budget"
        else:
            missed = f"the tool calls missed their {limit * 1000:.0f} ms share of the request's deadline"
        stage_deadline = time.monotonic() + budget_timeout(deadline, self._budget_s)
        for call in calls:
            if not call.permitted:  # the key may not call it: never sent
                for event in _not_allowed(call):
                    yield event
        pending = [call for call in calls if call.permitted]
        if not pending:
            return
        run = _Run(context, span, step, stage_deadline, missed)
        try:
            async for attempt in context.upstreams.guard(STAGE, self._rule).attempts(stage_deadline, "InvokeMany"):
                with attempt:
                    async for event in self._invoke_many(run, attempt, pending):
                        yield event
        except CircuitOpen as refused:
            for call in pending:
                for event in failed_call(call, grpc.StatusCode.UNAVAILABLE, refused.message, 0.0):
                    yield event

    async def _invoke_many(
        self, run: _Run, attempt: Attempt, pending: list[ToolCallPlan]
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """One InvokeMany stream over ``pending``; leaves in ``pending`` the calls held for another attempt.
        A stream that fails counts against the circuit once no call is tried again."""
        context, span, stage_deadline, missed = run.context, run.span, run.stage_deadline, run.missed
        request = tools_pb2.InvokeManyRequest(
            request_id=context.plan.request_id, timeout_ms=max(1, int(left_s(stage_deadline) * 1000))
        )
        for call in pending:
            tool_call = request.calls.add(call_id=call.call_id, name=call.name, arguments_json=call.arguments_json)
            if call.timeout_ms is not None:
                tool_call.timeout_ms = call.timeout_ms
        waiting = {call.call_id: call for call in pending}
        pending.clear()

        def held(call: ToolCallPlan, code: grpc.StatusCode) -> bool:
            if attempt.may_retry(code) and context.upstreams.is_idempotent(call.name):
                pending.append(call)
                return True
            return False

        clock = context.clock
        sent_ms = clock.now_ms()
        rpc_timeout = left_s(stage_deadline) + REPORT_GRACE_S
        client_timeout = timeout(context.deadline)
        if client_timeout is not None:
            rpc_timeout = min(rpc_timeout, client_timeout)
        with span.current():
            stream = context.upstreams.tools.InvokeMany(request, timeout=max(0.001, rpc_timeout))
        try:
            async for response in stream:
                result = response.result
                planned = waiting.pop(result.call_id, None)
                if planned is None:
                    continue
                end_ms = clock.now_ms()
                run.timed(planned, min(end_ms, sent_ms + response.start_ms), end_ms)
                if not result.HasField("error"):
                    yield gateway_pb2.GatewayEvent(tool_result=result)
                    continue
                if not run.step:
                    _raise_tool_mistake(planned, result.error)
                if not held(planned, code_of_value(result.error.code)):
                    for event in failed_call(
                        planned, code_of_value(result.error.code), result.error.message, result.duration_ms
                    ):
                        yield event
            attempt.succeeded()
        except grpc.aio.AioRpcError as error:
            mistake = None if run.step else client_mistake(error, _client_field)
            if mistake is not None:
                raise mistake from None
            code, message = error.code(), error.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and left_s(stage_deadline) <= REPORT_GRACE_S:
                message = missed
            end_ms = clock.now_ms()
            for call in waiting.values():
                run.timed(call, sent_ms, end_ms)
                if not held(call, code):
                    for event in failed_call(call, code, message, end_ms - sent_ms):
                        yield event
            if not pending:
                attempt.failed(code, f"InvokeMany {code.name}")
        finally:
            stream.cancel()
        if pending:
            attempt.retry()


@dataclass(frozen=True, slots=True)
class _Run:
    """One ``invoke``: its request, span, loop step, and when its calls must be done (``missed`` says so)."""

    context: StageContext
    span: StageSpan
    step: int
    stage_deadline: float
    missed: str

    def timed(self, call: ToolCallPlan, start_ms: float, end_ms: float) -> None:
        """Record ``call``'s span (tagged with the loop's step)."""
        clock = self.context.clock
        clock.spans[_stage(call)] = (start_ms, end_ms)
        if self.step:
            clock.steps[_stage(call)] = self.step


def failed_call(
    call: ToolCallPlan,
    code: grpc.StatusCode,
    message: str,
    duration_ms: float,
    reported: common_pb2.ToolError | None = None,
) -> tuple[gateway_pb2.GatewayEvent, gateway_pb2.GatewayEvent]:
    """A failed call's ToolResult (with its error: the one the tools service ``reported``, else one made here) and
    the Degraded event that goes with it."""
    error = common_pb2.ToolError()
    if reported is not None:
        error.CopyFrom(reported)
    else:
        error.status.CopyFrom(status_message(code, message))
        error.code, error.message = code_value(code), message
    result = common_pb2.ToolResult(call_id=call.call_id, name=call.name, error=error, duration_ms=duration_ms)
    return gateway_pb2.GatewayEvent(tool_result=result), degraded(_stage(call), code, message, error.status)


def _not_allowed(call: ToolCallPlan) -> tuple[gateway_pb2.GatewayEvent, gateway_pb2.GatewayEvent]:
    """The ToolResult (PERMISSION_DENIED, TOOL_NOT_ALLOWED) and Degraded event of a call the key may not make."""
    name = call.name if len(call.name) <= MAX_QUOTED_NAME else call.name[: MAX_QUOTED_NAME - 1] + "…"
    denied = PermissionDenied(
        f"this API key may not call the tool {name!r}", reason=Reason.TOOL_NOT_ALLOWED, metadata={"tool": name}
    )
    status = status_of(denied)
    reported = common_pb2.ToolError(code=status.code, message=status.message, status=status)
    return failed_call(call, grpc.StatusCode.PERMISSION_DENIED, denied.message, 0.0, reported)


def _stage(call: ToolCallPlan) -> str:
    return f"tool:{call.call_id}"


def _raise_tool_mistake(call: ToolCallPlan, error: common_pb2.ToolError) -> None:
    """A call the tools service refused as the client's mistake fails the request, naming tool_calls[i]."""
    field = f"tool_calls[{call.index}]"
    if error.code == code_value(grpc.StatusCode.NOT_FOUND):
        raise InvalidArgument.field(f"{field}.name", error.message or "unknown tool")
    if error.code == code_value(grpc.StatusCode.INVALID_ARGUMENT):
        violations = [FieldViolation(f"{field}.{v.field}", v.description) for v in error.field_violations]
        raise InvalidArgument(violations or [FieldViolation(field, error.message)])


def _client_field(name: str) -> str:
    """An InvokeMany request field (``calls[2].call_id``) as the gateway request's (``tool_calls[2].call_id``)."""
    return "tool_calls" + name.removeprefix("calls") if name.startswith("calls") else f"tool_calls.{name}"
