"""The gateway's pipeline: concurrent fan-out to retrieval and tools, fan-in, prompt, relayed token stream.

It works on protobuf messages on purpose: the relay forwards upstream messages without
rebuilding them, which keeps the per-token cost of the gateway low.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

import grpc

from gateway.prompt import PromptPassage, PromptToolResult, build_prompt, prompt_char_budget
from gateway.relay import relay
from gateway.request import AnswerPlan, ToolCallPlan, plan_request
from gateway.upstreams import Upstreams
from genmesh.errors import GenmeshError, InvalidArgument
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
        plan = plan_request(request, schemas)

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
        """Start retrieval and every tool call at once; yield each one's event the moment it finishes."""
        tasks: dict[asyncio.Task[object], ToolCallPlan | None] = {}
        if plan.retrieval_enabled:
            tasks[asyncio.create_task(clock.timed("retrieval", self._retrieve(plan, deadline)))] = None
        for call in plan.tool_calls:
            tasks[asyncio.create_task(clock.timed(f"tool:{call.call_id}", self._invoke(plan, call, deadline)))] = call
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: clock.spans.get(_stage(tasks[t]), (0.0, 0.0))[1]):
                    tool = tasks[task]
                    try:
                        outcome = task.result()
                    except grpc.aio.AioRpcError as error:
                        fault = _stage_failure(tool, error)
                        degraded.append(fault)
                        if tool is not None:
                            result = _failed_tool_result(tool, error, clock)
                            tool_results.append(result)
                            yield gateway_pb2.GatewayEvent(tool_result=result)
                        yield gateway_pb2.GatewayEvent(degraded=fault)
                        continue
                    if tool is None:
                        assert isinstance(outcome, retrieval_pb2.QueryResponse)
                        passages.extend(outcome.passages)
                        yield gateway_pb2.GatewayEvent(sources=gateway_pb2.Sources(passages=outcome.passages))
                    else:
                        assert isinstance(outcome, tools_pb2.InvokeResponse)
                        tool_results.append(outcome.result)
                        yield gateway_pb2.GatewayEvent(tool_result=outcome.result)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, GenmeshError):
                    await task

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

    async def _invoke(self, plan: AnswerPlan, call: ToolCallPlan, deadline: float | None) -> tools_pb2.InvokeResponse:
        tool_call = common_pb2.ToolCall(call_id=call.call_id, name=call.name, arguments_json=call.arguments_json)
        if call.timeout_ms is not None:
            tool_call.timeout_ms = call.timeout_ms
        invoke = tools_pb2.InvokeRequest(request_id=plan.request_id, call=tool_call)
        try:
            response: tools_pb2.InvokeResponse = await self._upstreams.tools.Invoke(invoke, timeout=_timeout(deadline))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument.field(
                    f"tool_calls[{call.index}].name", error.details() or "unknown tool"
                ) from None
            _raise_client_mistake(error, {}, f"tool_calls[{call.index}]", strip="call.")
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


def _failed_tool_result(call: ToolCallPlan, error: grpc.aio.AioRpcError, clock: StageClock) -> common_pb2.ToolResult:
    start, end = clock.spans.get(_stage(call), (0.0, 0.0))
    return common_pb2.ToolResult(
        call_id=call.call_id,
        name=call.name,
        error=common_pb2.ToolError(code=code_value(error.code()), message=error.details() or ""),
        duration_ms=end - start,
    )


def _raise_client_mistake(error: grpc.aio.AioRpcError, renames: dict[str, str], prefix: str, strip: str = "") -> None:
    """Re-raise an upstream INVALID_ARGUMENT or NOT_FOUND as the client's own mistake, fields renamed."""
    if error.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return
    mistake = from_rpc_error(error)
    if isinstance(mistake, InvalidArgument):
        violations = []
        for v in mistake.violations:
            name = v.field.removeprefix(strip)
            name = renames.get(name) or f"{prefix}.{name}"
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
