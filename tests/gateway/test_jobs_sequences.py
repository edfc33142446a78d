"""WatchJob's sequence numbers across the attempts of a retried job, on both stores, with the real workers.

The rule (jobs.proto WatchJobResponse, docs/JOBS.md): sequence numbers only ever increase. A retried job's
interrupted attempt's events are dropped and the new attempt's continue after the largest number ever given,
so a watch resumed with the last sequence of the first attempt gets only the new attempt's events, and a full
replay shows the latest attempt alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.jobs.config import JobConfig
from gateway.jobs.model import JobEvent, JobRecord, JobState, NewJob
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.stores import make_store
from genmesh.v1 import common_pb2, gateway_pb2

FIRST_ATTEMPT_EVENTS = 3
LEASE_S = 0.6
"""Postgres: a store that stops renewing loses its jobs after this (the sweep runs every third of it)."""


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> JobConfig:
    """One worker on a fresh SQLite file or a fresh Postgres database."""
    if request.param == "postgres":
        return JobConfig(request.getfixturevalue("postgres_url"), workers=1, lease_s=LEASE_S)
    return JobConfig(str(tmp_path / "jobs.db"), workers=1, lease_s=LEASE_S)


def _delta(text: str) -> gateway_pb2.GatewayEvent:
    return gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text=text))


class Pipeline:
    """A scripted Generate pipeline: ``events`` deltas, then the completion, or, with ``hold``, no end at all."""

    def __init__(self, events: int, hold: bool = False) -> None:
        self._events = events
        self._hold = hold
        self.held = asyncio.Event()

    async def answer(self, request: gateway_pb2.GatewayRequest, *_: object) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        for i in range(self._events):
            yield _delta(f"{i} ")
        if self._hold:
            self.held.set()
            await asyncio.Event().wait()
        yield gateway_pb2.GatewayEvent(complete=common_pb2.Completion(finish_reason=common_pb2.FINISH_REASON_STOP))


async def _watch(runtime: JobRuntime, job_id: str, after: int) -> tuple[list[JobEvent], JobRecord]:
    """Every event a watch from ``after`` yields, and the final job it ends with."""
    events: list[JobEvent] = []
    async with asyncio.timeout(60):
        async for item in runtime.watch(job_id, after):
            if isinstance(item, JobRecord):
                return events, item
            events.append(item)
    raise AssertionError("the watch ended without the final job")


def _check_the_retry(first: list[JobEvent], resumed: list[JobEvent], replay: list[JobEvent], final: JobRecord) -> None:
    assert final.state is JobState.SUCCEEDED, final
    last_first = max(e.seq for e in first)
    assert resumed, "the second attempt's events"
    assert min(e.seq for e in resumed) > last_first, "the new attempt continues after every earlier number"
    assert [e.seq for e in resumed] == list(range(last_first + 1, last_first + 1 + len(resumed)))
    events = [gateway_pb2.GatewayEvent.FromString(e.payload) for e in resumed]
    assert [e.WhichOneof("event") for e in events] == ["delta", "delta", "complete"]
    assert [e.delta.text for e in events[:2]] == ["0 ", "1 "], "the new attempt's own events"
    assert replay == resumed, "a full replay shows the latest attempt's events alone"
    assert len({e.attempt for e in replay}) == 1


async def test_a_job_retried_after_a_crash_numbers_its_events_after_the_first_attempts(config: JobConfig) -> None:
    # The first attempt, as a gateway that then died (kill -9) left it: running, three events stored.
    crashed = make_store(config)
    await crashed.open()
    request = gateway_pb2.GatewayRequest(question="q").SerializeToString()
    await crashed.submit(NewJob("job-1", request, "", 0, 1.0), 10)
    job = await crashed.claim_next(2.0)
    assert job is not None and job.seq_base == 0
    first = [JobEvent(seq, job.attempts, _delta(f"old {seq}").SerializeToString()) for seq in (1, 2, 3)]
    for event in first:
        await crashed.append_event(job.id, event.attempt, event.seq, event.payload)
    await crashed.close()  # no finish, no requeue: on Postgres the lease runs out, SQLite recovers at start

    runtime = JobRuntime(config, Pipeline(2).answer)
    await runtime.start()
    try:
        resumed, final = await _watch(runtime, job.id, FIRST_ATTEMPT_EVENTS)
        replay, _ = await _watch(runtime, job.id, 0)
    finally:
        await runtime.stop()
    assert final.attempts == 2 and {e.attempt for e in resumed} == {2}
    _check_the_retry(first, resumed, replay, final)


async def test_a_job_requeued_by_a_graceful_stop_numbers_its_events_after_the_first_attempts(
    config: JobConfig,
) -> None:
    held = Pipeline(FIRST_ATTEMPT_EVENTS, hold=True)
    stopping = JobRuntime(config, held.answer)
    await stopping.start()
    try:
        job = await stopping.submit(gateway_pb2.GatewayRequest(question="q").SerializeToString(), "", 0)
        await asyncio.wait_for(held.held.wait(), 30)
        first: list[JobEvent] = []
        async with asyncio.timeout(30):
            async for item in stopping.watch(job.id, 0):
                assert isinstance(item, JobEvent)
                first.append(item)
                if len(first) == FIRST_ATTEMPT_EVENTS:
                    break
    finally:
        await stopping.stop()  # the running job goes back to the queue (the attempt is not counted)
    assert [e.seq for e in first] == [1, 2, 3]

    runtime = JobRuntime(config, Pipeline(2).answer)
    await runtime.start()
    try:
        resumed, final = await _watch(runtime, job.id, FIRST_ATTEMPT_EVENTS)
        replay, _ = await _watch(runtime, job.id, 0)
    finally:
        await runtime.stop()
    _check_the_retry(first, resumed, replay, final)
