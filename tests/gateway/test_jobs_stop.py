"""Stopping the job workers ends within a bound even when the stop's cancellation never surfaces from a run.

A worker awaits its job's run, so the pool's cancel is handed on to the run. A run may end without raising it:
a cancel requested for the job at the same moment records CANCELLED, and Python 3.11's asyncio.wait_for returns
a result that arrives with the cancel (seen as a teardown hang of test_key_limits_jobs.py under load). The worker
must stop all the same; before, it went on to claim, found the queue empty and waited for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

from gateway.jobs.config import JobConfig
from gateway.jobs.model import JobState, NewJob
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.stores import make_store
from gateway.jobs.watch import JobFeed
from gateway.jobs.workers import WorkerPool
from genmesh.v1 import common_pb2, gateway_pb2

STOP_BOUND_S = 10.0
REQUEST = gateway_pb2.GatewayRequest(question="q").SerializeToString()
DELTA = gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text="a "))
COMPLETE = gateway_pb2.GatewayEvent(complete=common_pb2.Completion(finish_reason=common_pb2.FINISH_REASON_STOP))


async def stops_within(stop: Awaitable[None]) -> None:
    """Await ``stop``; it must end well within STOP_BOUND_S (the timeout also fails a stop that swallows it)."""
    started = time.monotonic()
    async with asyncio.timeout(STOP_BOUND_S):
        await stop
    assert time.monotonic() - started < STOP_BOUND_S / 2


class HeldPipeline:
    """One delta, then waits (``held`` set) for ever; with ``absorb``, a cancel there ends the wait and the run
    completes, as a pipeline whose wait_for got its result with the cancel."""

    def __init__(self, absorb: bool) -> None:
        self._absorb = absorb
        self.held = asyncio.Event()

    async def answer(self, request: gateway_pb2.GatewayRequest, *_: object) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        yield DELTA
        self.held.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if not self._absorb:
                raise
        yield COMPLETE


async def test_the_runtime_stops_when_the_running_job_absorbs_the_stops_cancellation(tmp_path: Path) -> None:
    config = JobConfig(str(tmp_path / "jobs.db"), workers=1)
    pipeline = HeldPipeline(absorb=True)
    runtime = JobRuntime(config, pipeline.answer)
    await runtime.start()
    job = await runtime.submit(REQUEST, "", 0)
    await asyncio.wait_for(pipeline.held.wait(), 30)
    await stops_within(runtime.stop())
    store = make_store(config)
    await store.open()
    try:
        record = await store.get(job.id)
        assert record is not None and record.state is JobState.SUCCEEDED  # the run that absorbed it went on
    finally:
        await store.close()


async def test_the_pool_stops_when_a_cancel_of_the_running_job_arrives_with_the_stop(tmp_path: Path) -> None:
    """A cancel requested on another gateway (``interrupt``) and the stop in the same step: the run receives one
    cancellation, records CANCELLED and returns; the worker stops anyway."""
    config = JobConfig(str(tmp_path / "jobs.db"), workers=1)
    store = make_store(config)
    await store.open()
    pipeline = HeldPipeline(absorb=False)
    pool = WorkerPool(store, JobFeed(), pipeline.answer, 1, config.timeout_s, config.lease_s)
    pool.start()
    try:
        job, _ = await store.submit(NewJob("job-1", REQUEST, "", 0, time.time()), config.queue_max)
        pool.queued()
        await asyncio.wait_for(pipeline.held.wait(), 30)
        pool.interrupt(job.id)
        await stops_within(pool.stop())
        record = await store.get(job.id)
        assert record is not None and record.state is JobState.CANCELLED
    finally:
        await store.close()
