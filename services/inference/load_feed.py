"""The replica's load as balancers read it: GetLoad snapshots and the WatchLoad stream (ORCA's shape).

A snapshot is sent at once, then whenever the load changes (sampled every ``SAMPLE_S``) and at least every
``report_interval``. The queue estimate is the waiting requests' share of the slots times the recent mean
request duration: crude, but it grows with the backlog and with slowness, which is all a balancer needs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2

from services.inference.engine.types import LoadStats

SAMPLE_S = 0.05
"""How often a WatchLoad stream looks for a change."""
DEFAULT_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.1
DURATION_SMOOTHING = 0.2
"""Weight of the newest request in the moving mean of request durations."""


def new_replica_id() -> str:
    """An id unique to this process: host name, pid and a random suffix (a restart gets a new one)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def report_interval_s(requested: duration_pb2.Duration, was_set: bool) -> float:
    """The interval a WatchLoad client asked for: 1 s when unset, never under 100 ms."""
    if not was_set:
        return DEFAULT_INTERVAL_S
    # Arithmetic on the fields, not ToTimedelta(): a Duration out of timedelta's range must not fail the call.
    return max(MIN_INTERVAL_S, requested.seconds + requested.nanos / 1e9)


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """What one report says."""

    stats: LoadStats
    accepting: bool
    queue_estimate_s: float

    def changed_from(self, other: LoadSnapshot | None) -> bool:
        """Whether a balancer would want to hear about this one (the estimate alone does not count)."""
        return other is None or (self.stats, self.accepting) != (other.stats, other.accepting)


class LoadFeed:
    """Samples the engine's load and streams snapshots; counts request durations for the queue estimate."""

    def __init__(self, replica_id: str, max_running: int, max_waiting: int) -> None:
        self.replica_id = replica_id
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.accepting = True
        """False once the replica drains."""
        self._mean_duration_s = 0.0

    def drain(self) -> None:
        """The replica drains: streams report ``accepting=false`` once more, then end (they must not hold the
        grace period); a stream opened later reports it and ends at once."""
        self.accepting = False

    def finished(self, duration_s: float) -> None:
        """A request took ``duration_s`` from admission to its end."""
        if self._mean_duration_s == 0.0:
            self._mean_duration_s = duration_s
        else:
            self._mean_duration_s += DURATION_SMOOTHING * (duration_s - self._mean_duration_s)

    def snapshot(self, stats: LoadStats) -> LoadSnapshot:
        """The report for ``stats``, now."""
        estimate = stats.waiting / self.max_running * self._mean_duration_s
        return LoadSnapshot(stats, self.accepting, estimate)

    def named_metrics(self, snapshot: LoadSnapshot) -> dict[str, float]:
        """The open-ended gauges of a WatchLoad report."""
        return {
            "max_running": float(self.max_running),
            "max_waiting": float(self.max_waiting),
            "queue_estimate_s": snapshot.queue_estimate_s,
            "kv_block_size": float(snapshot.stats.block_size),
            "kv_blocks_used": float(snapshot.stats.blocks_used),
            "kv_blocks_free": float(snapshot.stats.blocks_free),
            "prefix_cache_hit_rate": snapshot.stats.prefix_hit_rate,
        }

    async def watch(self, sample: Callable[[], LoadStats], interval_s: float) -> AsyncIterator[LoadSnapshot]:
        """Snapshots: one at once, then on change and at least every ``interval_s``, until cancelled or, once
        the replica drains, right after the snapshot that says so."""
        last: LoadSnapshot | None = None
        sent_at = float("-inf")
        while True:
            current = self.snapshot(sample())
            if current.changed_from(last) or time.monotonic() - sent_at >= interval_s:
                last, sent_at = current, time.monotonic()
                yield current
            if not current.accepting:
                return
            await asyncio.sleep(SAMPLE_S)


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The current wall-clock time as a Timestamp."""
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp
