"""One inference replica as the gateway sees it: its channel, circuit breaker, health, load and calls in flight.

Two feeds keep the view live while the gateway runs:

- health (grpc.health.v1 Watch): anything but SERVING, or the stream breaking (the process died), opens the
  replica's circuit at once, so it gets no new call; a replica that drains reports NOT_SERVING first;
- load (InferenceService.WatchLoad; polling GetLoad against a replica that does not serve it): running and
  waiting counts and ``accepting``. A replica whose reports stop for ``STALE_AFTER_S`` (a cut link sends no
  reset, so no stream breaks) counts as unreachable until a report arrives again.

The replica's channel pings every 2 s and gives up after 1 s without an answer, so on a dead link every call
on it (a Generate already answering included) fails UNAVAILABLE within about 3 s; the WatchLoad stream's
reports (at least one a second) are the data that lets the replica accept pings that often.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import grpc
from google.protobuf import duration_pb2

from gateway.balancing.choice import LoadView
from gateway.circuit import CircuitBreaker, CircuitConfig, CircuitState
from genmesh.channels import FAST_KEEPALIVE, open_channel
from genmesh.health import watch
from genmesh.tasks import cancel_and_wait
from genmesh.tls import ClientTLS
from genmesh.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger("genmesh.gateway")

REPORT_INTERVAL_S = 1.0
"""The load report interval the gateway asks replicas for."""
STALE_AFTER_S = 3 * REPORT_INTERVAL_S
"""A replica silent for this long is treated as unreachable."""
FEED_RETRY_S = 0.2


class Replica:
    """One replica; ``name`` is its ``ip:port``."""

    def __init__(self, name: str, circuit: CircuitConfig | None, tls: ClientTLS | None = None) -> None:
        self.name = name
        self.channel = open_channel(name, keepalive=FAST_KEEPALIVE, tls=tls)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.breaker = CircuitBreaker("inference", circuit)
        self.serving = False
        self.accepting = True
        self.replica_id = ""
        self.in_flight = 0
        self._report: inference_pb2.WatchLoadResponse | None = None
        self._reported_at = float("-inf")
        self._in_flight_at_report = 0
        self._feeds: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Follow the replica's health and load until ``close``."""
        self._feeds = [
            asyncio.create_task(watch(self.channel, self._on_health), name=f"health-{self.name}"),
            asyncio.create_task(self._follow_load(), name=f"load-{self.name}"),
        ]

    def eligible(self) -> bool:
        """Whether the replica should get new calls: serving, accepting, reporting, circuit closed."""
        fresh = time.monotonic() - self._reported_at < STALE_AFTER_S
        return self.serving and self.accepting and fresh and self.breaker.state is CircuitState.CLOSED

    def load(self) -> LoadView:
        """What the balancer weighs."""
        report = self._report
        if report is None or time.monotonic() - self._reported_at >= STALE_AFTER_S:
            return LoadView(self.in_flight)
        return LoadView(
            self.in_flight,
            report.running_count + report.waiting_count,
            self._in_flight_at_report,
            int(report.named_metrics.get("max_running", 1)),
        )

    def last_report(self) -> tuple[inference_pb2.WatchLoadResponse | None, float]:
        """The latest load report (None before the first) and how many seconds ago it arrived."""
        return self._report, time.monotonic() - self._reported_at

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Count a call in flight on this replica while the block runs."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def ensure_connected(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the channel to connect (a channel still backing off after a failure
        would fail the call at once instead of reaching a replica that just came back)."""
        if self.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY or timeout_s <= 0:
            return
        # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that comes as the channel connects
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.channel.channel_ready()

    async def close(self) -> None:
        await cancel_and_wait(*self._feeds)
        await self.channel.close()

    def _on_health(self, serving: bool, status: str) -> None:
        if self.serving and not serving:
            log.warning("inference replica not serving", extra={"replica": self.name, "status": status})
        self.serving = serving
        self.breaker.health(serving, status)

    def _on_report(self, report: inference_pb2.WatchLoadResponse) -> None:
        if self.accepting and not report.accepting:
            log.info("inference replica draining", extra={"replica": self.name})
        self._report, self._reported_at = report, time.monotonic()
        self._in_flight_at_report = self.in_flight
        self.accepting = report.accepting
        self.replica_id = report.replica_id

    async def _follow_load(self) -> None:
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(int(REPORT_INTERVAL_S * 1000))
        while True:
            try:
                stream = self.stub.WatchLoad(inference_pb2.WatchLoadRequest(report_interval=interval))
                async for report in stream:
                    self._on_report(report)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    await self._poll_load()
                    return
                retry_s = FEED_RETRY_S if self.serving else REPORT_INTERVAL_S  # loading or restarting: not so often
            else:
                # a draining replica ends its stream after saying so: ask again only now and then
                retry_s = FEED_RETRY_S if self.accepting else REPORT_INTERVAL_S
            await asyncio.sleep(retry_s)

    async def _poll_load(self) -> None:
        """For a replica without WatchLoad: GetLoad every interval."""
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                load = await self.stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=REPORT_INTERVAL_S)
                self._on_report(
                    inference_pb2.WatchLoadResponse(
                        running_count=load.running,
                        waiting_count=load.waiting,
                        kv_used_tokens=load.kv_used_tokens,
                        kv_capacity_tokens=load.kv_capacity_tokens,
                        replica_id=load.replica_id,
                        accepting=True,
                    )
                )
            await asyncio.sleep(REPORT_INTERVAL_S)
