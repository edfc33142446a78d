"""A job's run in the trace of its submission: the ``job.run`` span, child of the span of the SubmitJob call
(whose ``traceparent`` the job stores), so that the run's stage spans and upstream calls join that trace; a job
submitted outside any trace starts a trace of its own. Nothing is done while tracing is off."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from opentelemetry import trace

from gateway.jobs.model import JobRecord, JobState, Outcome
from genmesh import tracing
from genmesh.tracing.stored import stored_context

RUN = "job.run"
JOB_ID, ATTEMPT, STATE = "genmesh.job.id", "genmesh.job.attempt", "genmesh.job.state"


async def traced_run(job: JobRecord, run: Callable[[], Awaitable[Outcome | None]]) -> Outcome | None:
    """``run()`` (one attempt of ``job``: its outcome, None when another gateway took the job over) inside a
    ``job.run`` span that records how the attempt ended: the job's state, or ``interrupted`` when the run was
    cancelled without an outcome (the gateway stops: the job is queued again)."""
    if not tracing.enabled():
        return await run()
    with tracing.tracer().start_as_current_span(
        RUN,
        stored_context(job.traceparent),
        kind=trace.SpanKind.CONSUMER,
        attributes={JOB_ID: job.id, ATTEMPT: job.attempts},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            outcome = await run()
        except asyncio.CancelledError:
            span.set_attribute(STATE, "interrupted")
            raise
        except BaseException as error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            raise
        span.set_attribute(STATE, "lost" if outcome is None else outcome.state.name.lower())
        if outcome is not None and outcome.state is JobState.FAILED:
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error_message))
        return outcome
