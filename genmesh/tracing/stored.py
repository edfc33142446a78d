"""A trace context kept with work that runs later (a background job): the W3C ``traceparent`` of the span that
queued it, stored as text, and the context a span that runs the work continues from."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace

from genmesh.tracing import PROPAGATOR, enabled

TRACEPARENT = "traceparent"


def current_traceparent() -> str:
    """The ``traceparent`` of the current span; "" while tracing is off or outside any span."""
    if not enabled():
        return ""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def stored_context(traceparent: str) -> otel_context.Context:
    """The context whose span is the one ``traceparent`` names, to start a child span from; an empty context
    (a new trace) when it is "" or malformed. The parent counts as local, not remote: this process's own sampling
    decision, stored, which the child follows (the gateway re-decides for remote parents, a client's)."""
    empty = otel_context.Context()
    parent = trace.get_current_span(PROPAGATOR.extract({TRACEPARENT: traceparent}, empty)).get_span_context()
    if not parent.is_valid:
        return empty
    local = trace.SpanContext(parent.trace_id, parent.span_id, False, parent.trace_flags, parent.trace_state)
    return trace.set_span_in_context(trace.NonRecordingSpan(local), empty)
