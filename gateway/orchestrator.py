"""The gateway's pipeline: concurrent fan-out to retrieval and tools, fan-in, prompt, relayed token stream.

It works on protobuf messages on purpose: the relay forwards upstream messages without
rebuilding them, which keeps the per-token cost of the gateway low.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from gateway.prompt import PromptPassage, PromptToolResult, build_prompt, prompt_char_budget
from gateway.relay import relay
from gateway.request import AnswerPlan, ToolCallPlan, plan_request
from gateway.upstreams import Upstreams
from genmesh.errors import FieldViolation, GenmeshError, InvalidArgument
from genmesh.status import code_value, from_rpc_error
from genmesh.v1 import (
    common_pb2,
    gateway_pb2,
    inference_pb2,
    retrieval_pb2,
    tools_pb2,
)

log = logging.getLogger("genmesh.gateway")

# Downstream calls get the caller's remaining time minus this margin, so that the gateway
# can still answer before its own deadline.
DEADLINE_MARGIN_S = 0.05


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


class Orchestrator:
    """Runs one gateway request end to end."""

    def __init__(self, upstreams: Upstreams) -> None:
        self._upstreams = upstreams

    async def answer(
        self, request: gateway_pb2.GatewayRequest, time_remaining: float | None
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Stream the events of one answer; raises GenmeshError for failures the client must see."""
        clock = StageClock()
        deadline = None if time_remaining is None else time.monotonic() + time_remaining
        names = {call.name for call in request.tool_calls}
        schemas = await self._upstreams.tool_schemas(names) if names else {}
        plan = plan_request(request, schemas, self._upstreams.unverifiable_tool_prefixes)

        passages: list[common_pb2.Passage] = []
        tool_results: list[common_pb2.ToolResult] = []
        degraded: list[common_pb2.Degraded] = []
        async for event in self._fan_out(plan, clock, deadline, passages, tool_results, degraded):
            yield event

        pre_inference_ms = clock.now_ms()
        prompt = await self._prompt(plan, passages, tool_results)
        generate = inference_pb2.GenerateRequest(
            request_id=plan.request_id, prompt=prompt, sampling=request.sampling, truncate_prompt=True
        )
        call = self._upstreams.inference.Generate(generate, timeout=_timeout(deadline))
        inference_start = clock.now_ms()
        ttft_ms = 0.0
        try:
            async for message in relay(call):
                if message.HasField("delta"):
                    if not ttft_ms:
                        ttft_ms = clock.now_ms()
                    yield gateway_pb2.GatewayEvent(delta=message.delta)
                    continue
                clock.spans["inference"] = (inference_start, clock.now_ms())
                completion = message.complete
                completion.degraded.extend(degraded)
                self._fill_timings(completion.timings, clock, pre_inference_ms, ttft_ms)
                yield gateway_pb2.GatewayEvent(complete=completion)
        except grpc.aio.AioRpcError as error:
            raise _inference_error(error) from None

    async def _fan_out(
        self,
        plan: AnswerPlan,
        clock: StageClock,
        deadline: float | None,
        passages: list[common_pb2.Passage],
        tool_results: list[common_pb2.ToolResult],
        degraded: list[common_pb2.Degraded],
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Start retrieval and the tool calls (one InvokeMany stream) at once; yield each event the moment
        it arrives: sources, every ToolResult as the tools service streams it, and a Degraded per failure."""
        arrivals: asyncio.Queue[gateway_pb2.GatewayEvent | BaseException | None] = asyncio.Queue()
        workers = []
        if plan.retrieval_enabled:
            work = self._retrieval_stage(plan, clock, deadline, arrivals, passages, degraded)
            workers.append(asyncio.create_task(_feed(work, arrivals)))
        if plan.tool_calls:
            work = self._tools_stage(plan, clock, deadline, arrivals, tool_results, degraded)
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
                    yield item
        finally:
            for worker in workers:
                worker.cancel()
            for worker in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    async def _retrieval_stage(
        self,
        plan: AnswerPlan,
        clock: StageClock,
        deadline: float | None,
        arrivals: asyncio.Queue[gateway_pb2.GatewayEvent | BaseException | None],
        passages: list[common_pb2.Passage],
        degraded: list[common_pb2.Degraded],
    ) -> None:
        try:
            outcome = await clock.timed("retrieval", self._retrieve(plan, deadline))
        except grpc.aio.AioRpcError as error:
            fault = _stage_failure(None, error)
            degraded.append(fault)
            arrivals.put_nowait(gateway_pb2.GatewayEvent(degraded=fault))
            return
        assert isinstance(outcome, retrieval_pb2.QueryResponse)
        passages.extend(outcome.passages)
        arrivals.put_nowait(gateway_pb2.GatewayEvent(sources=gateway_pb2.Sources(passages=outcome.passages)))

    async def _tools_stage(
        self,
        plan: AnswerPlan,
        clock: StageClock,
        deadline: float | None,
        arrivals: asyncio.Queue[gateway_pb2.GatewayEvent | BaseException | None],
        tool_results: list[common_pb2.ToolResult],
        degraded: list[common_pb2.Degraded],
    ) -> None:
        """Run every tool call in one InvokeMany stream; relay each result as it arrives.

        A call that is the client's mistake (unknown tool, bad arguments) fails the whole request with
        INVALID_ARGUMENT naming ``tool_calls[i]...``; any other failure of a call, or of the stream, becomes
        that call's ToolResult with an error plus a Degraded event. A call's span runs from when the tools
        service started it (measured from when the gateway sent the stream) to when its result arrived.
        """
        request = tools_pb2.InvokeManyRequest(request_id=plan.request_id)
        for call in plan.tool_calls:
            tool_call = request.calls.add(call_id=call.call_id, name=call.name, arguments_json=call.arguments_json)
            if call.timeout_ms is not None:
                tool_call.timeout_ms = call.timeout_ms
        pending: dict[str, ToolCallPlan] = {call.call_id: call for call in plan.tool_calls}
        sent_ms = clock.now_ms()
        stream = self._upstreams.tools.InvokeMany(request, timeout=_timeout(deadline))
        try:
            async for response in stream:
                result = response.result
                planned = pending.pop(result.call_id, None)
                if planned is None:
                    continue
                end_ms = clock.now_ms()
                clock.spans[_stage(planned)] = (min(end_ms, sent_ms + response.start_ms), end_ms)
                if result.HasField("error"):
                    _raise_tool_mistake(planned, result.error)
                tool_results.append(result)
                arrivals.put_nowait(gateway_pb2.GatewayEvent(tool_result=result))
                if result.HasField("error"):
                    fault = common_pb2.Degraded(
                        stage=_stage(planned), code=result.error.code, message=result.error.message
                    )
                    degraded.append(fault)
                    arrivals.put_nowait(gateway_pb2.GatewayEvent(degraded=fault))
        except grpc.aio.AioRpcError as error:
            _raise_client_mistake(error, {}, "tool_calls", rename=_tool_field)
            end_ms = clock.now_ms()
            for call in pending.values():
                clock.spans[_stage(call)] = (sent_ms, end_ms)
                fault = _stage_failure(call, error)
                result = common_pb2.ToolResult(
                    call_id=call.call_id,
                    name=call.name,
                    error=common_pb2.ToolError(code=fault.code, message=fault.message),
                    duration_ms=end_ms - sent_ms,
                )
                tool_results.append(result)
                degraded.append(fault)
                arrivals.put_nowait(gateway_pb2.GatewayEvent(tool_result=result))
                arrivals.put_nowait(gateway_pb2.GatewayEvent(degraded=fault))
        finally:
            stream.cancel()

    async def _retrieve(self, plan: AnswerPlan, deadline: float | None) -> retrieval_pb2.QueryResponse:
        query = retrieval_pb2.QueryRequest(
            request_id=plan.request_id, text=plan.question, top_k=plan.top_k, collection=plan.collection
        )
        try:
            response: retrieval_pb2.QueryResponse = await self._upstreams.retrieval.Query(
                query, timeout=_timeout(deadline)
            )
        except grpc.aio.AioRpcError as error:
            _raise_client_mistake(error, {"text": "question", "top_k": "retrieval.top_k"}, "retrieval")
            raise
        return response

    async def _prompt(
        self, plan: AnswerPlan, passages: list[common_pb2.Passage], tool_results: list[common_pb2.ToolResult]
    ) -> str:
        try:
            context_length = await self._upstreams.context_length()
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        budget = prompt_char_budget(context_length, plan.sampling.max_tokens)
        limit = budget // 2
        if len(plan.question) > limit:
            raise InvalidArgument.field(
                "question", f"is too long for the model's context: {len(plan.question)} characters, at most {limit}"
            )
        return build_prompt(
            plan.question,
            [PromptPassage(p.title, p.text) for p in passages],
            [
                PromptToolResult(r.name, c.arguments_json, r.result_json or f"error: {r.error.message}")
                for r, c in zip(tool_results, _calls_for(plan, tool_results), strict=True)
            ],
            budget,
        )

    @staticmethod
    def _fill_timings(timings: common_pb2.Timings, clock: StageClock, pre_inference_ms: float, ttft_ms: float) -> None:
        timings.retrieval_ms = clock.span_ms("retrieval")
        timings.tools_ms = clock.span_ms("tool:")
        timings.pre_inference_ms = pre_inference_ms
        timings.time_to_first_token_ms = ttft_ms
        timings.total_ms = clock.now_ms()
        for stage, (start, end) in clock.spans.items():
            timings.stages.add(stage=stage, start_ms=start, end_ms=end)


def _timeout(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.001, deadline - time.monotonic() - DEADLINE_MARGIN_S)


def _stage(call: ToolCallPlan | None) -> str:
    return "retrieval" if call is None else f"tool:{call.call_id}"


def _calls_for(plan: AnswerPlan, results: list[common_pb2.ToolResult]) -> list[ToolCallPlan]:
    by_id = {call.call_id: call for call in plan.tool_calls}
    return [by_id[result.call_id] for result in results]


def _stage_failure(call: ToolCallPlan | None, error: grpc.aio.AioRpcError) -> common_pb2.Degraded:
    return common_pb2.Degraded(stage=_stage(call), code=code_value(error.code()), message=error.details() or "")


async def _feed(
    work: Awaitable[None], arrivals: asyncio.Queue[gateway_pb2.GatewayEvent | BaseException | None]
) -> None:
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
    strip: str = "",
    rename: Callable[[str], str] | None = None,
) -> None:
    """Re-raise an upstream INVALID_ARGUMENT or NOT_FOUND as the client's own mistake, fields renamed."""
    if error.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return
    mistake = from_rpc_error(error)
    if isinstance(mistake, InvalidArgument):
        violations = []
        for v in mistake.violations:
            name = v.field.removeprefix(strip)
            name = rename(name) if rename is not None else renames.get(name) or f"{prefix}.{name}"
            violations.append(type(v)(name, v.description))
        raise InvalidArgument(violations) from None
    raise mistake from None


def _inference_error(error: grpc.aio.AioRpcError) -> GenmeshError:
    mistake = from_rpc_error(error)
    if isinstance(mistake, InvalidArgument):
        return InvalidArgument(
            [type(v)("question" if v.field == "prompt" else v.field, v.description) for v in mistake.violations]
        )
    return mistake
