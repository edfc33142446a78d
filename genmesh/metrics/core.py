"""Prometheus metrics of one process: a registry, definitions held to the naming conventions, buckets per quantity.

Conventions (checked when a metric is defined, so a bad name fails at start-up and in the unit tests): names
start with ``genmesh_`` and are snake case; units are base units spelled out (``_seconds``, ``_bytes``; never
``_ms`` or ``_percent``: a share is a ``_ratio`` from 0 to 1); counters, and only counters, end in ``_total``;
label names never carry a per-request or per-client value (request ids, trace ids, keys, peers), so every label
set stays bounded; histograms name their buckets, chosen for the quantity (the ``*_BUCKETS`` below).
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from genmesh.version import version

PREFIX = "genmesh_"
#: Latencies from 1 ms to 60 s: RPC handling, request latency, queue time, time to first token.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
#: The time between two tokens of one stream: 0.5 ms (a small model on a GPU) to 2.5 s.
TOKEN_INTERVAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Tokens per request, 1-2-5 steps up to 20 000 (vLLM's request_prompt_tokens buckets, cut at a long context).
TOKEN_COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
#: Sequences or items handled together in one step: powers of two to 512.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_NAME = re.compile(r"genmesh_[a-z][a-z0-9]*(_[a-z0-9]+)*")
_LABEL = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
#: Words that name a unit other than the base one, refused in metric names.
NON_BASE_UNITS = frozenset(
    "ms us ns millis milliseconds microseconds nanoseconds minutes hours days kb mb gb kib mib gib "  # noqa: SIM905
    "kilobytes megabytes gigabytes percent perc pct".split()
)
#: Label names whose values would be per request or per client (unbounded series), refused.
UNBOUNDED_LABELS = frozenset(
    "request_id trace_id span_id job_id call_id ingest_id idempotency_key api_key key_id peer client user "  # noqa: SIM905
    "prompt query question url address ip".split()
)
#: Label names Prometheus keeps for itself (histogram buckets, summary quantiles).
_RESERVED_LABELS = frozenset({"le", "quantile"})

Kind = Literal["counter", "gauge", "histogram"]
_M = TypeVar("_M", bound=MetricWrapperBase)


def check_name(name: str, kind: Kind | Literal["collected"], labels: Iterable[str] = ()) -> None:
    """ValueError unless ``name`` and ``labels`` keep to the conventions (module docstring) for a ``kind``.

    ``collected``: a gauge read by a collector at scrape time (the same rules as a gauge).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"metric {name!r}: names are snake case and start with {PREFIX!r}")
    units = sorted(set(name.split("_")) & NON_BASE_UNITS)
    if units:
        raise ValueError(f"metric {name!r}: use base units (seconds, bytes, a 0..1 ratio), not {units[0]!r}")
    if (kind == "counter") != name.endswith("_total"):
        raise ValueError(f"metric {name!r}: counters, and only counters, end in '_total'")
    if name.endswith(("_bucket", "_count", "_sum", "_created")):
        raise ValueError(f"metric {name!r}: the suffix is one Prometheus gives series of its own")
    seen: set[str] = set()
    for label in labels:
        if not _LABEL.fullmatch(label) or label in _RESERVED_LABELS:
            raise ValueError(f"metric {name!r}: {label!r} is not a usable label name")
        if label in UNBOUNDED_LABELS:
            raise ValueError(f"metric {name!r}: label {label!r} would hold one series per request or client")
        if label in seen:
            raise ValueError(f"metric {name!r}: label {label!r} given twice")
        seen.add(label)


class Metrics:
    """The metrics of one registry. Each definition is checked (``check_name``) and made once: defining the same
    metric again returns the first (several servers of one process share it), a different one under the same
    name is a ValueError."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._defined: dict[str, tuple[object, MetricWrapperBase]] = {}
        self._collectors: dict[str, Collector] = {}
        self._lock = threading.Lock()

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter (``name`` ends in ``_total``)."""
        return self._define(
            "counter", name, labels, (), lambda: Counter(name, documentation, labels, registry=self.registry)
        )

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """A gauge set by the code; for a value read at scrape time, prefer ``collector``."""
        return self._define(
            "gauge", name, labels, (), lambda: Gauge(name, documentation, labels, registry=self.registry)
        )

    def histogram(
        self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        """A histogram with ``buckets`` chosen for its quantity (the ``*_BUCKETS`` constants)."""
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"metric {name!r}: buckets must be given, increasing")
        return self._define(
            "histogram",
            name,
            labels,
            tuple(buckets),
            lambda: Histogram(name, documentation, labels, registry=self.registry, buckets=buckets),
        )

    def collector(self, key: str, collector: Collector, names: Iterable[str]) -> None:
        """Register ``collector`` (gauges read at scrape time, one consistent snapshot per scrape) under ``key``;
        ``names`` are the metric names it yields, checked as gauges. A collector registered again under the same
        ``key`` replaces the earlier one (the last engine of a process is the one reported)."""
        for name in names:
            check_name(name, "collected")
        with self._lock:
            old = self._collectors.pop(key, None)
            if old is not None:
                self.registry.unregister(old)
            self.registry.register(collector)
            self._collectors[key] = collector

    def _define(
        self, kind: Kind, name: str, labels: Sequence[str], buckets: tuple[float, ...], make: Callable[[], _M]
    ) -> _M:
        check_name(name, kind, labels)
        signature = (kind, tuple(labels), buckets)
        with self._lock:
            known = self._defined.get(name)
            if known is not None:
                if known[0] != signature:
                    raise ValueError(f"metric {name!r} is already defined differently: {known[0]} ≠ {signature}")
                return cast(_M, known[1])
            made = make()
            self._defined[name] = (signature, made)
            return made


_process: Metrics | None = None
_process_lock = threading.Lock()


def process_metrics() -> Metrics:
    """The process's one registry, made on first use with the process collectors (``process_*``: CPU, memory,
    open files; ``python_info``; ``python_gc_*``, under the names every Prometheus user knows) and
    ``genmesh_build_info{version}``."""
    global _process
    with _process_lock:
        if _process is None:
            made = Metrics()
            ProcessCollector(registry=made.registry)
            PlatformCollector(registry=made.registry)
            GCCollector(registry=made.registry)
            build = made.gauge("genmesh_build_info", "Always 1; the genmesh version serving", ["version"])
            build.labels(version()).set(1)
            _process = made
        return _process


_CURRENT: contextvars.ContextVar[Metrics | None] = contextvars.ContextVar("genmesh_metrics", default=None)


def current() -> Metrics | None:
    """The metrics of the server being started: set by ``genmesh.server.serve`` when it serves /metrics (for its
    service's ``start()`` and the tasks started from it), None when metrics are off. Read it in ``start()``."""
    return _CURRENT.get()


def use(metrics: Metrics | None) -> contextvars.Token[Metrics | None]:
    """Make ``metrics`` the current ones in this context (``serve`` does; tests may)."""
    return _CURRENT.set(metrics)


def restore(token: contextvars.Token[Metrics | None]) -> None:
    """Undo the ``use`` that returned ``token``."""
    _CURRENT.reset(token)
