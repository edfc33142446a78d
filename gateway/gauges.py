"""The gateway's gauges, read at scrape time: its circuit breakers, its upstreams' health, its inference replicas'
load as the balancer sees it, and its job queue by state.

A scrape runs in the metrics server's thread, while breakers, replicas and the job store belong to the event
loop: the collector never touches them. It asks the loop for a snapshot (``read_gauges``, run there as a
coroutine), at most once a second however often it is scraped, and waits up to a second for it; a loop too
busy to answer in time gets the last snapshot served again. The job count gets half a second of that: a job store
slow or down (Postgres gone, the SQLite thread busy) leaves the jobs gauge out, never the upstreams' gauges
stale. Nothing is read between scrapes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gateway.balancing.replica import STALE_AFTER_S
from gateway.circuit import CircuitState
from gateway.jobs.model import JobState
from gateway.jobs.runtime import JobRuntime
from gateway.upstreams import Upstreams
from genmesh import mesh
from genmesh.errors import GenmeshError

log = logging.getLogger("genmesh.gateway")

P = "genmesh_gateway_"
#: A snapshot is read again once it is this old.
MAX_AGE_S = 1.0
#: How long a scrape waits for the loop to read one.
WAIT_S = 1.0
#: How long a snapshot waits for the job store's counts (well within WAIT_S).
JOBS_WAIT_S = 0.5
#: The value of ``circuit_state``: 0 closed, 1 half-open, 2 open.
CIRCUIT_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

GAUGES = (
    (f"{P}circuit_state", "Circuit breaker of an upstream, or of one inference replica: 0 closed, 1 half-open, 2 open"),
    (f"{P}upstream_up", "1 while the upstream (or inference replica) reports SERVING to the gateway's health watch"),
    (f"{P}replica_requests_running", "Requests running on an inference replica, from its last load report"),
    (f"{P}replica_requests_waiting", "Requests waiting on an inference replica, from its last load report"),
    (f"{P}replica_kv_cache_usage_ratio", "KV-cache use of an inference replica from 0 to 1, from its last load report"),
    (f"{P}jobs", "Jobs in the job queue by state (of every gateway sharing it)"),
)
NAMES = tuple(name for name, _ in GAUGES)


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One inference replica's last fresh load report."""

    replica: str
    running: int
    waiting: int
    kv_usage_ratio: float


@dataclass(frozen=True, slots=True)
class GatewayGauges:
    """One snapshot of everything the gauges report."""

    circuits: dict[str, CircuitState] = field(default_factory=dict)
    """By upstream: ``retrieval``, ``tools``, ``inference`` (its best replica's) and each inference replica."""
    up: dict[str, bool] = field(default_factory=dict)
    """By the same names."""
    replicas: tuple[ReplicaLoad, ...] = ()
    jobs: dict[JobState, int] | None = None
    """None while the job queue cannot be counted (starting, or its store failing or slower than JOBS_WAIT_S)."""


def read_upstreams(upstreams: Upstreams) -> GatewayGauges:
    """The breakers, health and replica load of ``upstreams`` now (on their event loop)."""
    circuits = {name: breaker.state for name, breaker in upstreams.breakers.items()}
    up = dict(upstreams.serving)
    loads: list[ReplicaLoad] = []
    replicas = list(upstreams.inference.replicas.values())
    for replica in replicas:
        circuits[replica.name] = replica.breaker.state
        up[replica.name] = replica.serving
        report, age_s = replica.last_report()
        if report is not None and age_s < STALE_AFTER_S:
            capacity = report.kv_capacity_tokens
            ratio = report.kv_used_tokens / capacity if capacity else 0.0
            loads.append(ReplicaLoad(replica.name, report.running_count, report.waiting_count, ratio))
    if replicas:  # the service as a whole: as open as its least open replica
        circuits[mesh.INFERENCE.name] = min((r.breaker.state for r in replicas), key=CIRCUIT_VALUES.__getitem__)
    up[mesh.INFERENCE.name] = any(r.serving for r in replicas)
    return GatewayGauges(circuits, up, tuple(loads))


async def read_gauges(upstreams: Upstreams, jobs: JobRuntime | None) -> GatewayGauges:
    """The job queue's counts (None when they take over JOBS_WAIT_S), then the upstreams' state."""
    counts = None if jobs is None else await count_jobs(jobs)
    gauges = read_upstreams(upstreams)
    return GatewayGauges(gauges.circuits, gauges.up, gauges.replicas, counts)


async def count_jobs(jobs: JobRuntime) -> dict[JobState, int] | None:
    """The job queue by state; None while it cannot be counted within JOBS_WAIT_S."""
    try:
        async with asyncio.timeout(JOBS_WAIT_S):
            return await jobs.count_by_state()
    except GenmeshError:  # still starting
        return None
    except TimeoutError:
        log.warning(
            "the job store did not count the jobs in time; the jobs gauge is left out", extra={"wait_s": JOBS_WAIT_S}
        )
        return None
    except Exception:
        log.exception("counting the jobs for the metrics failed")
        return None


class GaugeCollector:
    """The gauges, from a snapshot ``read`` takes on ``loop`` (module docstring)."""

    def __init__(
        self,
        read: Callable[[], Coroutine[Any, Any, GatewayGauges]],
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._loop = loop
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: GatewayGauges | None = None
        self._read_at = float("-inf")
        self._closed = False

    def close(self) -> None:
        """Report nothing from now on (the gateway stopped)."""
        self._closed = True

    def describe(self) -> Iterator[Metric]:
        """The gauges without values: registering the collector reads nothing."""
        for name, documentation in GAUGES:
            yield GaugeMetricFamily(name, documentation)

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        if snapshot is None:
            return
        families = [
            GaugeMetricFamily(name, documentation, labels=[label])
            for (name, documentation), label in zip(
                GAUGES, ("upstream", "upstream", "replica", "replica", "replica", "state"), strict=True
            )
        ]
        circuit, up, running, waiting, kv, jobs = families
        for name, state in sorted(snapshot.circuits.items()):
            circuit.add_metric([name], CIRCUIT_VALUES[state])
        for name, serving in sorted(snapshot.up.items()):
            up.add_metric([name], 1 if serving else 0)
        for load in snapshot.replicas:
            running.add_metric([load.replica], load.running)
            waiting.add_metric([load.replica], load.waiting)
            kv.add_metric([load.replica], load.kv_usage_ratio)
        for job_state, count in sorted((snapshot.jobs or {}).items()):
            jobs.add_metric([job_state.name.lower()], count)
        yield from families

    def snapshot(self) -> GatewayGauges | None:
        """The latest snapshot, read again when older than MAX_AGE_S; None while there is none (or closed)."""
        with self._lock:
            if self._closed:
                return None
            now = self._clock()
            if now - self._read_at < MAX_AGE_S or self._loop.is_closed() or self._on_loop():
                return self._snapshot  # a scrape from the loop's own thread would wait for itself
            reading = self._read()
            try:
                future = asyncio.run_coroutine_threadsafe(reading, self._loop)
            except RuntimeError:  # the loop closed meanwhile
                reading.close()
                return self._snapshot
            try:
                self._snapshot, self._read_at = future.result(WAIT_S), now
            except concurrent.futures.TimeoutError:
                future.cancel()
                log.warning("the gauges were not read in time; serving the last ones", extra={"wait_s": WAIT_S})
            except Exception:
                log.exception("reading the gauges failed")
            return self._snapshot

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False
