"""A trace context kept with work that runs later (a background job): the W3C ``traceparent`` of the span that
queued it, stored as text, and the context a span that runs the work continues from."""

from __future__ import annotations

from opentelemetry import context as otel_context

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
    (a new trace) when it is "" or malformed."""
    empty = otel_context.Context()
    return PROPAGATOR.extract({TRACEPARENT: traceparent}, empty) if traceparent else empty
