"""What every stage of one request shares: the plan, the clock, the deadline, and what earlier stages found."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.rpc import status_pb2

from gateway.clock import StageClock
from gateway.metrics import GatewayMetrics
from gateway.request import AnswerPlan
from gateway.upstreams import Upstreams
from genmesh.errors import GenmeshError
from genmesh.status import code_value, error_from_status, from_rpc_error, status_message
from genmesh.v1 import common_pb2, gateway_pb2


@dataclass(slots=True)
class Gathered:
    """What the stages have found so far, folded from their events by the orchestrator."""

    passages: list[common_pb2.Passage] = field(default_factory=list)
    tool_results: list[common_pb2.ToolResult] = field(default_factory=list)
    degraded: list[common_pb2.Degraded] = field(default_factory=list)

    def fold(self, event: gateway_pb2.GatewayEvent) -> None:
        """Keep what ``event`` carries for the prompt and the Completion."""
        kind = event.WhichOneof("event")
        if kind == "sources":
            self.passages.extend(event.sources.passages)
        elif kind == "tool_result":
            self.tool_results.append(event.tool_result)
        elif kind == "degraded":
            self.degraded.append(event.degraded)


@dataclass(slots=True)
class StageContext:
    """One request as its stages see it."""

    upstreams: Upstreams
    plan: AnswerPlan
    clock: StageClock
    deadline: float | None
    """The client's deadline (time.monotonic), None without one."""
    stage_deadline: float | None
    """When retrieval and the tool calls must be done: a share of the client's deadline (StageBudgets), so that
    inference keeps the rest; None without a client deadline."""
    gathered: Gathered = field(default_factory=Gathered)
    metrics: GatewayMetrics | None = None
    """Where the stages' latencies go; None while metrics are off."""

    def latency(self, stage: str) -> Callable[[float], None] | None:
        """What observes the latency of ``stage`` (None while metrics are off)."""
        return None if self.metrics is None else self.metrics.stage_latency(stage)

    def degrade(self, fault: common_pb2.Degraded, failure: GenmeshError | None = None) -> None:
        """A stage (or one tool call) failed: under require_all_stages the request fails (with ``failure``, else
        the fault's own status); otherwise the answer goes on without it (kept for the Completion, counted)."""
        if self.plan.require_all_stages:
            raise failure or error_from_status(fault.status, f"{fault.stage} failed: {fault.status.message}")
        self.gathered.degraded.append(fault)
        if self.metrics is not None:
            self.metrics.degraded(fault)


class Stage(Protocol):
    """One step of the pipeline: streams the events it produces for the client."""

    def run(self, context: StageContext) -> AsyncIterator[gateway_pb2.GatewayEvent]: ...


def degraded(
    stage: str, code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None
) -> gateway_pb2.GatewayEvent:
    """The event that says ``stage`` failed and the answer goes on without it; ``status`` (e.g. a tool's own, with
    its ErrorInfo reason) replaces the one made from ``code`` and ``message``."""
    fault = common_pb2.Degraded(
        stage=stage, status=status or status_message(code, message), code=code_value(code), message=message
    )
    return gateway_pb2.GatewayEvent(degraded=fault)


def client_mistake(error: grpc.aio.AioRpcError, rename: Callable[[str], str]) -> GenmeshError | None:
    """An upstream's INVALID_ARGUMENT or NOT_FOUND as the client's own mistake (field paths renamed to the
    gateway request's); None for failures that are not the client's doing."""
    if error.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return None
    return from_rpc_error(error, rename)
