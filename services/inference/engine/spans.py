"""One request's phases in the engine as trace spans, children of the RPC's span that submitted it.

``inference.queued`` (arrival → admitted, given its cache blocks), ``inference.prefill`` (→ its first token) and
``inference.decode`` (→ its end). The engine steps whole batches on its own thread, so the spans are not made as
the phases run: the request's context is taken when it is submitted, and the spans are made when it ends, with
the times its ``SequenceOutput`` recorded (monotonic clock, moved onto the wall clock that spans use). A request
that ended in a phase gets no spans of the phases after it. Made only while tracing is on: ``Engine.generate``
builds no ``PhaseSpans`` otherwise.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from genmesh.tracing import tracer
from services.inference.engine.output import SequenceOutput
from services.inference.engine.sequence import Sequence
from services.inference.engine.types import Finished

QUEUED, PREFILL, DECODE = "inference.queued", "inference.prefill", "inference.decode"
#: OpenTelemetry's GenAI attribute names where one fits; genmesh's own otherwise.
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
BATCH_SIZE = "genmesh.inference.batch_size"
"""Sequences whose prompt chunks ran in the forward pass that gave the request its first token."""


class PhaseSpans:
    """The parent context and clock offset of one request, taken when it is submitted (on the event loop)."""

    __slots__ = ("_offset_ns", "_parent")

    def __init__(self) -> None:
        self._parent = otel_context.get_current()
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._offset_ns

    def end(self, seq: Sequence, out: SequenceOutput, done: Finished | None, error: BaseException | None) -> None:
        """Make the spans of the phases the request went through: it ended with ``done``, or with ``error``
        (its stream failed, or was left: cancelled), now."""
        now = time.monotonic()
        end = now if done is None else min(now, out.arrival + done.total_ms / 1000.0)
        started, first = out.started, out.first_token_at
        phases: list[tuple[str, float, float, dict[str, Any]]] = [
            (QUEUED, out.arrival, started if started is not None else end, {})
        ]
        if started is not None:
            prefill = {INPUT_TOKENS: seq.num_prompt_tokens, BATCH_SIZE: out.prefill_batch}
            phases.append((PREFILL, started, first if first is not None else end, prefill))
            if first is not None:
                phases.append((DECODE, first, max(first, end), {}))
        generated = done.completion_tokens if done is not None else seq.num_generated
        last = len(phases) - 1
        for index, (name, start, stop, attributes) in enumerate(phases):
            span = tracer().start_span(name, self._parent, start_time=self._ns(start), attributes=attributes)
            if index == last:
                _outcome(span, generated, done, error)
            span.end(end_time=self._ns(stop))


def _outcome(span: trace.Span, generated: int, done: Finished | None, error: BaseException | None) -> None:
    """How the request ended, on the span of the phase it ended in."""
    span.set_attribute(OUTPUT_TOKENS, generated)
    if done is not None:
        span.set_attribute(FINISH_REASONS, [done.finish_reason.value])
    elif error is None or isinstance(error, asyncio.CancelledError | GeneratorExit):
        span.set_attribute(FINISH_REASONS, ["cancelled"])
    else:
        span.set_attribute(FINISH_REASONS, ["error"])
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
