"""The inference engine's Prometheus metrics, named as vLLM names them (``vllm:time_to_first_token_seconds`` is
``genmesh_inference_time_to_first_token_seconds``) except where vLLM's names break the conventions
(``kv_cache_usage_perc`` is ``kv_cache_usage_ratio``). docs/OBSERVABILITY.md lists them.

The engine records events as they happen (the engine thread, prometheus_client is thread-safe): queue time when a
request first gets its cache blocks, time to first token at its first token, the rest when it ends. Occupancy is read at
scrape time from one ``Scheduler.load()`` snapshot, so running, waiting and KV use always agree with each other
and with what ``GetLoad`` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from genmesh.errors import DeadlineExceeded
from genmesh.metrics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS,
    TOKEN_COUNT_BUCKETS,
    TOKEN_INTERVAL_BUCKETS,
    Metrics,
)
from services.inference.engine.config import EngineConfig
from services.inference.engine.types import Finished, FinishReason, LoadStats

if TYPE_CHECKING:
    from services.inference.engine.sequence import Sequence

P = "genmesh_inference_"
#: Why a request ended without completing: the ``reason`` of ``genmesh_inference_aborted_requests_total``.
ABORT_REASONS = ("cancelled", "deadline", "error")


class _LoadCollector:
    """The occupancy gauges, from one load snapshot per scrape."""

    GAUGES = (
        (f"{P}num_requests_running", "Requests holding cache blocks, or getting them at the next step (GetLoad)"),
        (f"{P}num_requests_waiting", "Requests queued for cache blocks (GetLoad's waiting)"),
        (f"{P}max_num_requests_running", "Most requests generating at once (--max-running)"),
        (f"{P}max_num_requests_waiting", "Most requests waiting before RESOURCE_EXHAUSTED (--max-waiting)"),
        (f"{P}kv_cache_used_tokens", "KV-cache positions in blocks held by running sequences"),
        (f"{P}kv_cache_capacity_tokens", "KV-cache positions in all blocks"),
        (f"{P}kv_cache_usage_ratio", "KV-cache use from 0 to 1 (vLLM: kv_cache_usage_perc)"),
        (f"{P}kv_cache_blocks_used", "KV-cache blocks held by running sequences"),
        (f"{P}kv_cache_blocks_free", "KV-cache blocks free to hand out (empty, or cached prefixes nobody holds)"),
    )
    NAMES = tuple(name for name, _ in GAUGES)

    def __init__(self, read: Callable[[], LoadStats], config: EngineConfig) -> None:
        self._read = read
        self._config = config

    def describe(self) -> Iterator[Metric]:
        """The gauges without values: the registry learns the names without reading the load."""
        for name, documentation in self.GAUGES:
            yield GaugeMetricFamily(name, documentation)

    def collect(self) -> Iterator[Metric]:
        load = self._read()
        kv_ratio = load.kv_used_tokens / load.kv_capacity_tokens if load.kv_capacity_tokens else 0.0
        values = (
            load.running,
            load.waiting,
            self._config.max_running,
            self._config.max_waiting,
            load.kv_used_tokens,
            load.kv_capacity_tokens,
            kv_ratio,
            load.blocks_used,
            load.blocks_free,
        )
        for (name, documentation), value in zip(self.GAUGES, values, strict=True):
            yield GaugeMetricFamily(name, documentation, value=value)


class InferenceMetrics:
    """What the engine records; each method is one event."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.queue_time = metrics.histogram(
            f"{P}request_queue_time_seconds", "Time a request waited for its first cache blocks", LATENCY_BUCKETS
        )
        self.time_to_first_token = metrics.histogram(
            f"{P}time_to_first_token_seconds", "Time from a request's arrival to its first token", LATENCY_BUCKETS
        )
        self.time_per_output_token = metrics.histogram(
            f"{P}time_per_output_token_seconds",
            "Mean time between two tokens of a completed request (its decode time over its tokens after the first)",
            TOKEN_INTERVAL_BUCKETS,
        )
        self.e2e_latency = metrics.histogram(
            f"{P}e2e_request_latency_seconds", "Time from a request's arrival to its completion", LATENCY_BUCKETS
        )
        self.request_prompt_tokens = metrics.histogram(
            f"{P}request_prompt_tokens", "Prompt tokens of a completed request", TOKEN_COUNT_BUCKETS
        )
        self.request_generation_tokens = metrics.histogram(
            f"{P}request_generation_tokens", "Tokens generated for a completed request", TOKEN_COUNT_BUCKETS
        )
        self.decode_batch_size = metrics.histogram(
            f"{P}decode_batch_size", "Sequences decoded together in one forward pass", BATCH_SIZE_BUCKETS
        )
        self.prompt_tokens = metrics.counter(
            f"{P}prompt_tokens_total", "Prompt tokens prefilled (counted when the prompt's first token is sampled)"
        )
        self.generation_tokens = metrics.counter(
            f"{P}generation_tokens_total",
            "Tokens generated and streamed (counted when the request ends; equals the usage reported)",
        )
        self.success = metrics.counter(
            f"{P}request_success_total", "Requests completed, by why they stopped", ["finished_reason"]
        )
        self.aborted = metrics.counter(
            f"{P}aborted_requests_total",
            "Requests ended without completing: cancelled (client gone, Abort, shutdown), past their deadline, or "
            "failed by an engine error",
            ["reason"],
        )
        self.preemptions = metrics.counter(
            f"{P}num_preemptions_total",
            "Sequences preempted (by recompute) to free cache blocks for older running sequences",
        )
        self.prefix_cache_queries = metrics.counter(
            f"{P}prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache (at first admission)"
        )
        self.prefix_cache_hits = metrics.counter(
            f"{P}prefix_cache_hits_total", "Prompt tokens found in the prefix cache instead of being computed"
        )
        completed = [reason for reason in FinishReason if reason is not FinishReason.CANCELLED]
        self._success = {reason: self.success.labels(reason.value) for reason in completed}
        self._aborted = {reason: self.aborted.labels(reason) for reason in ABORT_REASONS}

    def attach(self, read_load: Callable[[], LoadStats], config: EngineConfig) -> None:
        """Report the occupancy of the engine whose ``load`` this is (the last attached, in a process with two)."""
        self._metrics.collector(f"{P}load", _LoadCollector(read_load, config), _LoadCollector.NAMES)

    def scheduled(self, admitted: Iterable[Sequence], preempted: int) -> None:
        """A step admitted ``admitted`` for the first time (their prefix-cache lookups) and preempted ``preempted``."""
        for seq in admitted:
            self.prefix_cache_queries.inc(seq.num_prompt_tokens)
            self.prefix_cache_hits.inc(seq.prefix_hit_tokens)
        if preempted:
            self.preemptions.inc(preempted)

    def queued(self, seconds: float) -> None:
        """A request first got its cache blocks after ``seconds`` in the queue."""
        self.queue_time.observe(seconds)

    def first_token(self, seconds: float, prompt_tokens: int) -> None:
        """A request's first token was sampled ``seconds`` after it arrived, its ``prompt_tokens`` prefilled."""
        self.time_to_first_token.observe(seconds)
        self.prompt_tokens.inc(prompt_tokens)

    def decoded(self, batch_size: int) -> None:
        """One decode pass ran for ``batch_size`` sequences."""
        self.decode_batch_size.observe(batch_size)

    def finished(self, done: Finished, sampled: int) -> None:
        """A request ended with ``done``; ``sampled`` tokens were drawn for it (an EOS token included)."""
        self.generation_tokens.inc(done.completion_tokens)
        if done.finish_reason is FinishReason.CANCELLED:
            self._aborted["cancelled"].inc()
            return
        self._success[done.finish_reason].inc()
        self.e2e_latency.observe(done.total_ms / 1000.0)
        self.request_prompt_tokens.observe(done.prompt_tokens)
        self.request_generation_tokens.observe(done.completion_tokens)
        if sampled > 1:
            self.time_per_output_token.observe((done.total_ms - done.ttft_ms) / 1000.0 / (sampled - 1))

    def failed(self, error: BaseException, generated: int) -> None:
        """A request ended with ``error`` after ``generated`` tokens were streamed."""
        self.generation_tokens.inc(generated)
        self._aborted["deadline" if isinstance(error, DeadlineExceeded) else "error"].inc()
