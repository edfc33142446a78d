"""The gateway's fan-out: retrieval and the tool calls run concurrently, each inside its budget and circuit breaker.

A stage that fails, misses its budget or finds its upstream's circuit open is reported as a Degraded event
(and the answer proceeds without it), unless the request set ``require_all_stages``: then the request fails
with the stage's status. Client mistakes found upstream (unknown tool, bad arguments, unknown collection)
always fail the request, naming the gateway request's field.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from gateway.circuit import CircuitBreaker, CircuitState
from gateway.deadlines import REPORT_GRACE_S, StageBudgets, budget_timeout, left_s, timeout
from gateway.request import AnswerPlan, ToolCallPlan
from gateway.upstreams import Upstreams
from genmesh.errors import FieldViolation, InvalidArgument
from genmesh.status import code_of_value, code_value, error_for_code, from_rpc_error
from genmesh.tasks import cancel_and_wait
from genmesh.v1 import common_pb2, gateway_pb2, retrieval_pb2, tools_pb2

Arrival = gateway_pb2.GatewayEvent | BaseException | None

TOOL_ATTEMPTS = 3
"""Most InvokeMany attempts of an idempotent tool call that failed with UNAVAILABLE."""
RETRY_BACKOFF_S = 0.05
"""First back-off between tool-call attempts; doubled each time, with full jitter."""


@dataclass(slots=True)
class StageClock:
    """Start and end of every stage, in ms since the request arrived."""

    origin: float = field(default_factory=time.perf_counter)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    def now_ms(self) -> float:
        return (time.perf_counter() - self.origin) * 1000.0

    async def timed(self, stage: str, work: Awaitable[object]) -> object:
        start = self.now_ms()
        try:
            return await work
        finally:
            self.spans[stage] = (start, self.now_ms())

    def span_ms(self, prefix: str) -> float:
        matching = [span for name, span in self.spans.items() if name.startswith(prefix)]
        if not matching:
            return 0.0
        return max(end for _, end in matching) - min(start for start, _ in matching)


@dataclass(slots=True)
class Gathered:
    """What the fan-out collected for the prompt and the Completion."""

    passages: list[common_pb2.Passage] = field(default_factory=list)
    tool_results: list[common_pb2.ToolResult] = field(default_factory=list)
    degraded: list[common_pb2.Degraded] = field(default_factory=list)


class FanOut:
    """Runs the pre-inference stages of one request and streams their events as they arrive."""

    def __init__(self, upstreams: Upstreams, budgets: StageBudgets, tool_attempts: int = TOOL_ATTEMPTS) -> None:
        self._upstreams = upstreams
        self._budgets = budgets
        self._tool_attempts = tool_attempts

    async def run(
        self, plan: AnswerPlan, clock: StageClock, deadline: float | None, gathered: Gathered
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Start retrieval and the tool calls at once; yield each event the moment it arrives: sources, every
        ToolResult as the tools service streams it, and a Degraded per failure (or raise, per the request)."""
        arrivals: asyncio.Queue[Arrival] = asyncio.Queue()  # bounded by the stages' event count
        stage = _Stage(self._upstreams, plan, clock, deadline, arrivals, gathered)
        workers = []
        if plan.retrieval_enabled:
            budget = plan.retrieval_budget_s or self._budgets.retrieval_s
            workers.append(asyncio.create_task(_feed(stage.retrieval(budget), arrivals)))
        if plan.tool_calls:
            work = stage.tools(self._budgets.tools_s, self._tool_attempts)
            workers.append(asyncio.create_task(_feed(work, arrivals)))
        try:
            running = len(workers)
            while running:
                item = await arrivals.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    if item.HasField("degraded") and plan.require_all_stages:
                        fault = item.degraded
                        raise error_for_code(code_of_value(fault.code), f"{fault.stage} failed: {fault.message}")
                    yield item
        finally:
            await cancel_and_wait(*workers)


@dataclass(slots=True)
class _Stage:
    """The stages of one request and where they put what they found."""

    upstreams: Upstreams
    plan: AnswerPlan
    clock: StageClock
    deadline: float | None
    arrivals: asyncio.Queue[Arrival]
    gathered: Gathered

    def _degrade(self, stage: str, code: grpc.StatusCode, message: str) -> None:
        fault = common_pb2.Degraded(stage=stage, code=code_value(code), message=message)
        self.gathered.degraded.append(fault)
        self.arrivals.put_nowait(gateway_pb2.GatewayEvent(degraded=fault))

    async def retrieval(self, budget_s: float) -> None:
        breaker = self.upstreams.breakers["retrieval"]
        if not breaker.allow():
            self._degrade("retrieval", grpc.StatusCode.UNAVAILABLE, breaker.describe())
            return
        limit = timeout(self.deadline)
        by_budget = limit is None or budget_s < limit
        query = retrieval_pb2.QueryRequest(
            request_id=self.plan.request_id,
            text=self.plan.question,
            top_k=self.plan.top_k,
            collection=self.plan.collection,
        )
        call = self.upstreams.retrieval.Query(query, timeout=budget_timeout(self.deadline, budget_s))
        try:
            outcome = await self.clock.timed("retrieval", call)
        except grpc.aio.AioRpcError as error:
            _raise_client_mistake(error, {"text": "question", "top_k": "retrieval.top_k"}, "retrieval")
            code, message = error.code(), error.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and by_budget:
                message = f"retrieval missed its {budget_s * 1000:.0f} ms budget"
                breaker.record_failure(message)
            else:
                breaker.record(code, f"retrieval {code.name}")
            self._degrade("retrieval", code, message)
            return
        finally:
            breaker.release()
        breaker.record_success()
        assert isinstance(outcome, retrieval_pb2.QueryResponse)
        self.gathered.passages.extend(outcome.passages)
        self.arrivals.put_nowait(gateway_pb2.GatewayEvent(sources=gateway_pb2.Sources(passages=outcome.passages)))

    async def tools(self, budget_s: float, attempts: int) -> None:
        """Run every tool call in InvokeMany streams inside the tool budget; relay each result as it arrives.

        A call that is the client's mistake (unknown tool, bad arguments) fails the whole request with
        INVALID_ARGUMENT naming ``tool_calls[i]...``; any other failure of a call, or of the stream, becomes
        that call's ToolResult with an error plus a Degraded event, except that the calls of idempotent tools
        that failed with UNAVAILABLE are tried again (a new stream, after a jittered back-off) while attempts
        and budget remain. Non-idempotent tools are never retried. A call's span runs from when the tools
        service started it (measured from when the gateway sent the stream) to when its result arrived.
        """
        stage_deadline = time.monotonic() + budget_timeout(self.deadline, budget_s)
        breaker = self.upstreams.breakers["tools"]
        pending = list(self.plan.tool_calls)
        for attempt in range(1, attempts + 1):
            backoff = random.uniform(0, RETRY_BACKOFF_S * 2 ** (attempt - 1))
            may_retry = attempt < attempts and left_s(stage_deadline) > backoff + RETRY_BACKOFF_S

            def retryable(call: ToolCallPlan, code: grpc.StatusCode, may_retry: bool = may_retry) -> bool:
                return may_retry and code == grpc.StatusCode.UNAVAILABLE and self.upstreams.is_idempotent(call.name)

            probe = breaker.state is not CircuitState.CLOSED
            if breaker.allow():
                pending = await self._invoke_many(pending, stage_deadline, budget_s, breaker, retryable, probe)
            else:
                refused = grpc.StatusCode.UNAVAILABLE
                pending = [c for c in pending if self._settle(c, refused, breaker.describe(), 0.0, retryable)]
            if not pending:
                return
            await asyncio.sleep(backoff)

    async def _invoke_many(
        self,
        calls: list[ToolCallPlan],
        stage_deadline: float,
        budget_s: float,
        breaker: CircuitBreaker,
        retryable: Callable[[ToolCallPlan, grpc.StatusCode], bool],
        probe: bool,
    ) -> list[ToolCallPlan]:
        """One InvokeMany stream over ``calls``; returns the calls held back for another attempt. A stream that
        fails counts against the circuit once no call is tried again, or at once when it was the circuit's probe."""
        request = tools_pb2.InvokeManyRequest(
            request_id=self.plan.request_id, timeout_ms=max(1, int(left_s(stage_deadline) * 1000))
        )
        for call in calls:
            tool_call = request.calls.add(call_id=call.call_id, name=call.name, arguments_json=call.arguments_json)
            if call.timeout_ms is not None:
                tool_call.timeout_ms = call.timeout_ms
        pending = {call.call_id: call for call in calls}
        held: list[ToolCallPlan] = []
        sent_ms = self.clock.now_ms()
        rpc_timeout = left_s(stage_deadline) + REPORT_GRACE_S
        client_timeout = timeout(self.deadline)
        if client_timeout is not None:
            rpc_timeout = min(rpc_timeout, client_timeout)
        stream = self.upstreams.tools.InvokeMany(request, timeout=max(0.001, rpc_timeout))
        try:
            async for response in stream:
                result = response.result
                planned = pending.pop(result.call_id, None)
                if planned is None:
                    continue
                end_ms = self.clock.now_ms()
                self.clock.spans[_stage(planned)] = (min(end_ms, sent_ms + response.start_ms), end_ms)
                if not result.HasField("error"):
                    self.gathered.tool_results.append(result)
                    self.arrivals.put_nowait(gateway_pb2.GatewayEvent(tool_result=result))
                    continue
                _raise_tool_mistake(planned, result.error)
                code = code_of_value(result.error.code)
                if self._settle(planned, code, result.error.message, result.duration_ms, retryable):
                    held.append(planned)
            breaker.record_success()
        except grpc.aio.AioRpcError as error:
            _raise_client_mistake(error, {}, "tool_calls", rename=_tool_field)
            code, message = error.code(), error.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and left_s(stage_deadline) <= REPORT_GRACE_S:
                message = f"the tool calls missed their {budget_s * 1000:.0f} ms budget"
            end_ms = self.clock.now_ms()
            for call in pending.values():
                self.clock.spans[_stage(call)] = (sent_ms, end_ms)
                if self._settle(call, code, message, end_ms - sent_ms, retryable):
                    held.append(call)
            if probe or not held:
                breaker.record(code, f"InvokeMany {code.name}")
        finally:
            breaker.release()
            stream.cancel()
        return held

    def _settle(
        self,
        call: ToolCallPlan,
        code: grpc.StatusCode,
        message: str,
        duration_ms: float,
        retryable: Callable[[ToolCallPlan, grpc.StatusCode], bool],
    ) -> bool:
        """Report a failed call, or say (True) that it is held for another attempt."""
        if retryable(call, code):
            return True
        result = common_pb2.ToolResult(
            call_id=call.call_id,
            name=call.name,
            error=common_pb2.ToolError(code=code_value(code), message=message),
            duration_ms=duration_ms,
        )
        self.gathered.tool_results.append(result)
        self.arrivals.put_nowait(gateway_pb2.GatewayEvent(tool_result=result))
        self._degrade(_stage(call), code, message)
        return False


def _stage(call: ToolCallPlan) -> str:
    return f"tool:{call.call_id}"


async def _feed(work: Awaitable[None], arrivals: asyncio.Queue[Arrival]) -> None:
    """Run one fan-out stage; hand its failure (a client mistake) to the reader; then say it is done."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as error:
        arrivals.put_nowait(error)
    finally:
        arrivals.put_nowait(None)


def _raise_tool_mistake(call: ToolCallPlan, error: common_pb2.ToolError) -> None:
    """A call the tools service refused as the client's mistake fails the request, naming tool_calls[i]."""
    field = f"tool_calls[{call.index}]"
    if error.code == code_value(grpc.StatusCode.NOT_FOUND):
        raise InvalidArgument.field(f"{field}.name", error.message or "unknown tool")
    if error.code == code_value(grpc.StatusCode.INVALID_ARGUMENT):
        violations = [FieldViolation(f"{field}.{v.field}", v.description) for v in error.field_violations]
        raise InvalidArgument(violations or [FieldViolation(field, error.message)])


def _tool_field(name: str) -> str:
    """An InvokeMany request field (``calls[2].call_id``) as the gateway request's (``tool_calls[2].call_id``)."""
    return "tool_calls" + name.removeprefix("calls") if name.startswith("calls") else f"tool_calls.{name}"


def _raise_client_mistake(
    error: grpc.aio.AioRpcError,
    renames: dict[str, str],
    prefix: str,
    rename: Callable[[str], str] | None = None,
) -> None:
    """Re-raise an upstream INVALID_ARGUMENT or NOT_FOUND as the client's own mistake, fields renamed."""
    if error.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return
    mistake = from_rpc_error(error)
    if isinstance(mistake, InvalidArgument):
        violations = []
        for v in mistake.violations:
            name = rename(v.field) if rename is not None else renames.get(v.field) or f"{prefix}.{v.field}"
            violations.append(type(v)(name, v.description))
        raise InvalidArgument(violations) from None
    raise mistake from None
