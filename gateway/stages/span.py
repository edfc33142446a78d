"""A stage of one gateway request as traces and metrics see it: a span ``gateway.<stage>``, child of the span
current when the stage starts (the gateway's Generate server span), and the stage's latency, both taken from the
same two clock points.

The span is current only around the creation of an upstream call (``with span.current(): call = stub.Query(...)``),
never across a ``yield``: the stages are async generators, and a context attached in one stays attached in
whoever iterates it until it resumes, so the call's CLIENT span is the stage span's child while nothing else
ever runs under it. A stage makes its span under the span current when it starts (a Generate's server span, a
job's ``job.run``: with tracing on, every stage has one); with tracing off none is made: a stage costs two clock
reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from genmesh import tracing
from genmesh.errors import GenmeshError
from genmesh.status import code_of_value, status_code_of
from genmesh.tracing import SERVER_FAULTS, tracer
from genmesh.v1 import gateway_pb2

CODE_ATTRIBUTE = "genmesh.stage.code"
"""The gRPC code name of a stage that degraded or failed (``UNAVAILABLE``)."""
DEGRADED_ATTRIBUTE = "genmesh.stage.degraded"
"""True on the span of a stage the answer went on without (its code in CODE_ATTRIBUTE)."""
STEP_ATTRIBUTE = "genmesh.agent.step"
"""The agent loop's step (1..) of an ``inference`` or ``tools`` span; absent before the loop and without tools."""
CANCELLED_ATTRIBUTE = "genmesh.stage.cancelled"
"""True on the span of a stage cut short because the request went away; its latency is not observed."""


class StageSpan:
    """One stage's span and latency. A context manager: leaving the block ends the stage (with the error that
    left it, if any); ``end`` ends it earlier, at the point its outcome is known."""

    __slots__ = ("_ended", "_marked", "_observe", "_span", "_start_ns", "_wall_ns")

    def __init__(self, stage: str, latency: Callable[[float], None] | None = None) -> None:
        self._observe = latency
        self._ended = False
        self._marked = False
        self._start_ns = time.perf_counter_ns()
        self._wall_ns = 0
        self._span: trace.Span = trace.INVALID_SPAN
        if tracing.enabled() and trace.get_current_span().get_span_context().is_valid:
            self._wall_ns = time.time_ns()
            self._span = tracer().start_span(f"gateway.{stage}", start_time=self._wall_ns)

    @property
    def span(self) -> trace.Span:
        return self._span

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The span is the current one inside the block, which must not ``yield`` (module docstring)."""
        if not self._span.is_recording():
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(self._span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def step(self, step: int) -> None:
        """Tag the span with the agent loop's ``step`` (0: none)."""
        if step and self._span.is_recording():
            self._span.set_attribute(STEP_ATTRIBUTE, step)

    def degraded(self, code: grpc.StatusCode, message: str) -> None:
        """The stage failed and the answer goes on without it (the first such failure names the code)."""
        if self._marked or not self._span.is_recording():
            return
        self._marked = True
        self._span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code.name}: {message}"))
        self._span.set_attributes({CODE_ATTRIBUTE: code.name, DEGRADED_ATTRIBUTE: True})

    def saw(self, event: gateway_pb2.GatewayEvent) -> None:
        """Mark the stage degraded when ``event``, one it yields, is a Degraded event."""
        if event.HasField("degraded"):
            fault = event.degraded
            self.degraded(code_of_value(fault.code), fault.message)

    def end(self, error: BaseException | None = None) -> None:
        """End the stage now (once; later calls do nothing). A stage the request's cancellation cut short is not
        measured; one that failed with ``error`` is, and its span says how it failed."""
        if self._ended:
            return
        self._ended = True
        elapsed_ns = time.perf_counter_ns() - self._start_ns
        recording = self._span.is_recording()
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            if recording:
                self._span.set_attribute(CANCELLED_ATTRIBUTE, True)
        else:
            if error is not None and recording:
                self._failed(error)
            if self._observe is not None:
                self._observe(elapsed_ns / 1e9)
        if recording:
            self._span.end(self._wall_ns + elapsed_ns)

    def _failed(self, error: BaseException) -> None:
        if isinstance(error, GenmeshError):
            code, message = status_code_of(error), error.message
        else:
            code, message = grpc.StatusCode.UNKNOWN, repr(error)
        self._span.set_attribute(CODE_ATTRIBUTE, code.name)
        if code in SERVER_FAULTS and not self._marked:  # a client's mistake is no fault of the stage's
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code.name}: {message}"))

    def __enter__(self) -> StageSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.end(error)
