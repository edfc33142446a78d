"""The gateway's pipeline: concurrent fan-out to retrieval and tools, fan-in, prompt, relayed token stream.

It works on protobuf messages on purpose: the relay forwards upstream messages without
rebuilding them, which keeps the per-token cost of the gateway low.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator

import grpc

from gateway.circuit import CircuitState
from gateway.deadlines import DEADLINE_MARGIN_S, StageBudgets, deadline_after, left_s, timeout
from gateway.prompt import PromptPassage, PromptToolResult, build_prompt, prompt_char_budget
from gateway.relay import relay
from gateway.request import AnswerPlan, ToolCallPlan, plan_request
from gateway.stages import FanOut, Gathered, StageClock
from gateway.upstreams import Upstreams
from genmesh.errors import GenmeshError, InvalidArgument, Unavailable
from genmesh.status import from_rpc_error
from genmesh.v1 import common_pb2, gateway_pb2, inference_pb2

log = logging.getLogger("genmesh.gateway")

GENERATE_ATTEMPTS = 3
"""Most attempts of a Generate call that failed with UNAVAILABLE before its first message."""
CONNECT_WAIT_S = 1.0
"""How long a Generate attempt waits for the inference channel to (re)connect, inside the deadline: as long as
the channel's longest reconnect back-off (genmesh.channels), so that a restarted service is found."""
RETRY_BACKOFF_S = 0.05
"""First back-off between Generate attempts; doubled each time, with full jitter."""


class Orchestrator:
    """Runs one gateway request end to end."""

    def __init__(
        self,
        upstreams: Upstreams,
        budgets: StageBudgets | None = None,
        generate_attempts: int = GENERATE_ATTEMPTS,
        connect_wait_s: float = CONNECT_WAIT_S,
    ) -> None:
        if generate_attempts < 1:
            raise ValueError(f"generate attempts must be at least 1, got {generate_attempts}")
        self._upstreams = upstreams
        self._fan_out = FanOut(upstreams, budgets or StageBudgets())
        self._generate_attempts = generate_attempts
        self._connect_wait_s = connect_wait_s

    async def answer(
        self, request: gateway_pb2.GatewayRequest, time_remaining: float | None
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Stream the events of one answer; raises GenmeshError for failures the client must see."""
        clock = StageClock()
        deadline = deadline_after(time_remaining)
        names = {call.name for call in request.tool_calls}
        schemas = await self._upstreams.tool_schemas(names) if names else {}
        plan = plan_request(request, schemas, self._upstreams.unverifiable_tool_prefixes)

        gathered = Gathered()
        async for event in self._fan_out.run(plan, clock, deadline, gathered):
            yield event

        pre_inference_ms = clock.now_ms()
        prompt = await self._prompt(plan, gathered.passages, gathered.tool_results)
        generate = inference_pb2.GenerateRequest(
            request_id=plan.request_id, prompt=prompt, sampling=request.sampling, truncate_prompt=True
        )
        inference_start = clock.now_ms()
        ttft_ms = 0.0
        async for message in self._generate(generate, deadline):
            if message.HasField("delta"):
                if not ttft_ms:
                    ttft_ms = clock.now_ms()
                yield gateway_pb2.GatewayEvent(delta=message.delta)
                continue
            clock.spans["inference"] = (inference_start, clock.now_ms())
            completion = message.complete
            completion.degraded.extend(gathered.degraded)
            self._fill_timings(completion.timings, clock, pre_inference_ms, ttft_ms)
            yield gateway_pb2.GatewayEvent(complete=completion)

    async def _generate(
        self, request: inference_pb2.GenerateRequest, deadline: float | None
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        """The inference stream, relayed. A call that fails with UNAVAILABLE before its first message is tried
        again (jittered back-off, after waiting for the channel to reconnect) while attempts and time remain;
        once a message has been relayed it never is, and the failure goes to the client. While the inference
        circuit breaker is open, calls are refused at once with UNAVAILABLE."""
        breaker = self._upstreams.breakers["inference"]
        connect_until = time.monotonic() + self._connect_wait_s  # one reconnect wait per request, not per attempt
        for attempt in range(1, self._generate_attempts + 1):
            probe = breaker.state is not CircuitState.CLOSED
            if not breaker.allow():
                raise Unavailable(breaker.describe())
            relayed = False
            try:
                await self._upstreams.ensure_connected("inference", min(left_s(connect_until), left_s(deadline)))
                call = self._upstreams.inference.Generate(request, timeout=timeout(deadline))
                async for message in relay(call):
                    if not relayed:
                        relayed = True
                        breaker.record_success()
                    yield message
                return
            except grpc.aio.AioRpcError as error:
                code = error.code()
                backoff = random.uniform(0, RETRY_BACKOFF_S * 2 ** (attempt - 1))
                last = attempt == self._generate_attempts or left_s(deadline) < backoff + 2 * DEADLINE_MARGIN_S
                if relayed or code != grpc.StatusCode.UNAVAILABLE or last or probe:
                    # One outcome per request (a single unlucky request's retries do not open the circuit), except
                    # that a failed probe of a half-open circuit opens it again at once.
                    breaker.record(code, f"Generate {code.name}")
                    raise _inference_error(error) from None
                log.info("retrying Generate", extra={"attempt": attempt + 1, "detail": error.details()})
            finally:
                breaker.release()
            await asyncio.sleep(backoff)

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


def _calls_for(plan: AnswerPlan, results: list[common_pb2.ToolResult]) -> list[ToolCallPlan]:
    by_id = {call.call_id: call for call in plan.tool_calls}
    return [by_id[result.call_id] for result in results]


def _inference_error(error: grpc.aio.AioRpcError) -> GenmeshError:
    mistake = from_rpc_error(error)
    if isinstance(mistake, InvalidArgument):
        return InvalidArgument(
            [type(v)("question" if v.field == "prompt" else v.field, v.description) for v in mistake.violations]
        )
    return mistake
