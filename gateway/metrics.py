"""The gateway's Prometheus metrics (docs/OBSERVABILITY.md lists them): what its requests, upstream calls and jobs
record as they happen. The gauges of its upstreams, replicas and job queue are read at scrape time instead
(``gateway.gauges``).

``GatewayService.start`` makes one ``GatewayMetrics`` when the process serves metrics and hands it to the parts
that record; with metrics off they hold None and record nothing. Every label value comes from a fixed set: the
stage names, the upstream names, the job states, the ``ErrorInfo`` reasons of refusals and the gRPC codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram

from gateway.jobs.model import JobState
from genmesh.errors import Reason, ResourceExhausted
from genmesh.metrics import LATENCY_BUCKETS, Metrics
from genmesh.metrics.rpc import GO_CODE_NAMES
from genmesh.status import code_of_value
from genmesh.v1 import common_pb2

P = "genmesh_gateway_"
#: The ``stage`` of the stage latencies and of degraded answers.
STAGES = ("retrieval", "tools", "inference")
#: The upstreams whose calls the gateway retries.
UPSTREAMS = ("retrieval", "tools", "inference")
#: The refusals counted from the start (others, should a new one come, once they happen).
REFUSALS = (Reason.GATEWAY_STREAM_LIMIT, Reason.RATE_LIMITED, Reason.QUOTA_EXHAUSTED, Reason.JOB_QUEUE_FULL)
FINAL_JOB_STATES = tuple(state for state in JobState if state.final)


def stage_label(stage: str) -> str:
    """The ``stage`` label of a Degraded event's stage: a tool call's (``tool:<call_id>``) is ``tools``."""
    return "tools" if stage.startswith("tool:") else stage


class GatewayMetrics:
    """What the gateway records; each method is one event."""

    def __init__(self, metrics: Metrics) -> None:
        self.stage_duration = metrics.histogram(
            f"{P}stage_duration_seconds",
            "Time a stage of a request took, from its start to its outcome (also when it degraded or failed)",
            LATENCY_BUCKETS,
            ["stage"],
        )
        self.time_to_first_token = metrics.histogram(
            f"{P}time_to_first_token_seconds",
            "Time from the start of an answer at the gateway to its first token relayed",
            LATENCY_BUCKETS,
        )
        self.generated_tokens = metrics.counter(f"{P}generated_tokens_total", "Tokens relayed to clients")
        self.degraded_answers = metrics.counter(
            f"{P}degraded_total",
            "Stage failures an answer went on without (one per Degraded event), by stage and gRPC code",
            ["stage", "code"],
        )
        self.admission_refused = metrics.counter(
            f"{P}admission_refused_total",
            "Generate streams and jobs refused before they started, by ErrorInfo reason",
            ["reason"],
        )
        self.retries = metrics.counter(
            f"{P}retries_total", "Upstream calls tried again by the gateway (after the first attempt)", ["upstream"]
        )
        self.job_run_duration = metrics.histogram(
            f"{P}job_run_duration_seconds",
            "Time a job's run took on this gateway, from its claim to its end, by outcome",
            LATENCY_BUCKETS,
            ["outcome"],
        )
        self.jobs_finished = metrics.counter(
            f"{P}jobs_finished_total", "Job runs ended on this gateway, by final state", ["state"]
        )
        self._stage = {stage: self.stage_duration.labels(stage) for stage in STAGES}
        self._retries = {upstream: self.retries.labels(upstream) for upstream in UPSTREAMS}
        self._refused: dict[str, Counter] = {}
        for reason in REFUSALS:
            self._refused_counter(reason)
        self._finished = {state: self.jobs_finished.labels(state.name.lower()) for state in FINAL_JOB_STATES}
        self._run_duration: dict[JobState, Histogram] = {
            state: self.job_run_duration.labels(state.name.lower()) for state in FINAL_JOB_STATES
        }

    def stage_latency(self, stage: str) -> Callable[[float], None]:
        """What observes a duration of ``stage`` (one of STAGES)."""
        return self._stage[stage].observe

    def first_token(self, seconds: float) -> None:
        """An answer relayed its first token ``seconds`` after it started."""
        self.time_to_first_token.observe(seconds)

    def relayed(self, tokens: int) -> None:
        """An answer relayed ``tokens`` tokens to its client."""
        self.generated_tokens.inc(tokens)

    def degraded(self, fault: common_pb2.Degraded) -> None:
        """An answer goes on without the stage ``fault`` names."""
        self.degraded_answers.labels(stage_label(fault.stage), GO_CODE_NAMES[code_of_value(fault.code)]).inc()

    def refused(self, reason: str) -> None:
        """A stream or job was refused before it started, for ``reason`` (an ErrorInfo reason)."""
        self._refused_counter(reason).inc()

    def retry_counter(self, upstream: str) -> Callable[[], None]:
        """What counts one retry of a call to ``upstream`` (one of UPSTREAMS)."""
        return self._retries[upstream].inc

    def job_finished(self, state: JobState, seconds: float) -> None:
        """A job's run here ended in ``state`` after ``seconds``."""
        self._finished[state].inc()
        self._run_duration[state].observe(seconds)

    def _refused_counter(self, reason: str) -> Counter:
        counter = self._refused.get(reason)
        if counter is None:
            counter = self._refused[reason] = self.admission_refused.labels(reason.lower())
        return counter


@contextlib.contextmanager
def counting_refusals(metrics: GatewayMetrics | None) -> Iterator[None]:
    """Count a ResourceExhausted the block raises (an admission check refusing) under its reason."""
    try:
        yield
    except ResourceExhausted as refused:
        if metrics is not None:
            metrics.refused(refused.reason)
        raise
