"""The Postgres job store on a real server, as two gateways share it: order, idempotency and claims across
stores, leases (renewal, takeover, a lost lease refusing writes), notifications; and two runtimes on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio

from gateway.jobs.config import JobConfig
from gateway.jobs.model import JobRecord, JobState, NewJob, Outcome
from gateway.jobs.postgres_store import PostgresJobStore
from gateway.jobs.runtime import JobRuntime
from gateway.jobs.sqlite_store import SqliteJobStore
from gateway.jobs.store import LeaseLost, Listener, QueueFull
from gateway.jobs.stores import make_store
from gateway.jobs.watch import JobFeed, watch
from genmesh.errors import InvalidArgument
from genmesh.v1 import common_pb2, gateway_pb2

NOW = 1_800_000_000.0
LEASE_S = 0.5


@pytest_asyncio.fixture
async def stores(postgres_url: str) -> AsyncIterator[tuple[PostgresJobStore, PostgresJobStore]]:
    """Two stores on one database, as two gateways have them; opened at once (the schema is made once)."""
    a, b = PostgresJobStore(postgres_url, LEASE_S), PostgresJobStore(postgres_url, LEASE_S)
    await asyncio.gather(a.open(), b.open())
    yield a, b
    await asyncio.gather(a.close(), b.close())


def _job(n: int, priority: int = 0, key: str = "", request: bytes = b"") -> NewJob:
    return NewJob(f"job-{n}", request or f"request {n}".encode(), key, priority, NOW + n)


async def _claimed(store: PostgresJobStore) -> JobRecord:
    job = await store.claim_next(NOW)
    assert job is not None
    return job


async def test_claims_go_by_priority_then_age_across_gateways(stores: tuple[PostgresJobStore, ...]) -> None:
    a, b = stores
    for n, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1)]:
        await (a if n % 2 else b).submit(_job(n, priority), 10)
    order = []
    for store in (a, b, a, b, a):
        job = await _claimed(store)
        assert job.state is JobState.RUNNING and job.attempts == 1 and job.started == NOW
        order.append(job.id)
    assert order == ["job-2", "job-4", "job-1", "job-3", "job-5"]
    assert await a.claim_next(NOW) is None and await b.claim_next(NOW) is None


async def test_concurrent_claims_never_hand_out_a_job_twice(stores: tuple[PostgresJobStore, ...]) -> None:
    jobs = 60
    for n in range(jobs):
        await stores[0].submit(_job(n), jobs)

    async def claimer(store: PostgresJobStore) -> list[str]:
        taken = []
        while (job := await store.claim_next(NOW)) is not None:
            taken.append(job.id)
        return taken

    claims = await asyncio.gather(*(claimer(store) for store in stores for _ in range(8)))
    every = [job_id for taken in claims for job_id in taken]
    assert sorted(every) == sorted(f"job-{n}" for n in range(jobs)), "each job claimed exactly once"


async def test_an_idempotency_key_names_one_job_across_gateways(stores: tuple[PostgresJobStore, ...]) -> None:
    a, b = stores
    submits = [(a if n % 2 else b).submit(_job(n, key="k", request=b"same"), 100) for n in range(20)]
    answers = await asyncio.gather(*submits)
    assert sum(created for _, created in answers) == 1
    assert len({job.id for job, _ in answers}) == 1
    with pytest.raises(InvalidArgument) as caught:
        await b.submit(_job(99, key="k", request=b"another request"), 100)
    assert caught.value.violations[0].field == "idempotency_key"
    assert len(await a.list(None, None, 100)) == 1


async def test_a_full_queue_refuses_new_jobs_but_not_known_keys(stores: tuple[PostgresJobStore, ...]) -> None:
    a, b = stores
    await a.submit(_job(1, key="a"), 2)
    await b.submit(_job(2), 2)
    with pytest.raises(QueueFull):
        await a.submit(_job(3), 2)
    assert (await b.submit(_job(4, key="a", request=b"request 1"), 2))[0].id == "job-1"
    await _claimed(b)
    await a.submit(_job(5), 2)


async def test_an_expired_lease_is_taken_over_and_the_old_holder_writes_nothing(
    stores: tuple[PostgresJobStore, ...],
) -> None:
    a, b = stores
    await a.submit(_job(1), 10)
    held = await _claimed(a)
    for seq in (1, 2, 3):
        await a.append_event(held.id, 1, seq, b"first attempt")
    report = await b.recover(max_attempts=3, now=NOW)
    assert report.requeued == 0 and await b.claim_next(NOW) is None, "a live lease is not taken"

    await asyncio.sleep(LEASE_S * 1.5)  # a stopped renewing: the lease expires
    report = await b.recover(max_attempts=3, now=NOW + 1)
    assert (report.requeued, report.failed, report.cancelled, report.queued) == (1, 0, 0, 1)
    taken = await _claimed(b)
    assert taken.id == held.id and taken.attempts == 2 and taken.seq_base == 3
    assert (await b.snapshot(held.id, 0, 10))[1] == [], "the interrupted attempt's events are gone"

    assert await a.finish(held.id, Outcome(JobState.FAILED, 13, "late"), NOW + 2) is None
    with pytest.raises(LeaseLost):
        await a.append_event(held.id, 1, 4, b"late")
    await a.requeue(held.id)
    assert (await a.renew([held.id])).lost == {held.id}
    await b.append_event(held.id, 2, 4, b"second attempt")
    done = await b.finish(held.id, Outcome(JobState.SUCCEEDED, result=b"result"), NOW + 3)
    assert done is not None and done.state is JobState.SUCCEEDED and done.attempts == 2
    _, events = await a.snapshot(held.id, 0, 10)
    assert [(e.seq, e.attempt, e.payload) for e in events] == [(4, 2, b"second attempt")]


async def test_heartbeats_keep_a_lease_until_they_stop(stores: tuple[PostgresJobStore, ...]) -> None:
    a, b = stores
    await a.submit(_job(1), 10)
    held = await _claimed(a)
    until = time.monotonic() + LEASE_S * 4
    while time.monotonic() < until:
        renewal = await a.renew([held.id])
        assert renewal.lost == frozenset() and renewal.cancel_requested == frozenset()
        assert (await b.recover(3, NOW)).requeued == 0 and await b.claim_next(NOW) is None
        await asyncio.sleep(LEASE_S / 5)
    await b.request_cancel(held.id, NOW)
    assert (await a.renew([held.id])).cancel_requested == {held.id}, "a cancel asked elsewhere reaches the holder"
    await asyncio.sleep(LEASE_S * 1.5)
    report = await b.recover(3, NOW + 1)
    assert report.cancelled == 1, "a cancel under way ends the job when its gateway is gone"
    job = await b.get(held.id)
    assert job is not None and job.state is JobState.CANCELLED and job.finished == NOW + 1


async def test_a_job_past_its_last_attempt_fails_when_its_lease_expires(stores: tuple[PostgresJobStore, ...]) -> None:
    a, b = stores
    await a.submit(_job(1), 10)
    await _claimed(a)
    await asyncio.sleep(LEASE_S * 1.5)
    await b.recover(max_attempts=2, now=NOW)
    await _claimed(b)
    await asyncio.sleep(LEASE_S * 1.5)
    report = await a.recover(max_attempts=2, now=NOW + 5)
    assert (report.requeued, report.failed, report.queued) == (0, 1, 0)
    job = await a.get("job-1")
    assert job is not None and job.state is JobState.FAILED and job.finished == NOW + 5 and job.error_code == 10
    assert job.error_message == "gave up: the gateway stopped during attempt 2, the last of 2 (--job-max-attempts)"


async def test_requeue_cancel_list_and_purge(stores: tuple[PostgresJobStore, ...]) -> None:
    a, b = stores
    for n in range(1, 5):
        await a.submit(_job(n, key=f"key-{n}"), 10)
    first = await _claimed(a)
    await a.requeue(first.id)  # a graceful stop: the attempt is not counted
    again = await _claimed(b)
    assert again.id == first.id and again.attempts == 1
    cancelled = await a.request_cancel("job-2", NOW + 1)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED and cancelled.finished == NOW + 1
    assert await a.request_cancel("job-404", NOW) is None
    await b.finish(again.id, Outcome(JobState.SUCCEEDED), NOW + 20)
    assert [j.id for j in await b.list(None, None, 2)] == ["job-4", "job-3"]
    assert [j.id for j in await b.list(None, 3, 10)] == ["job-2", "job-1"]
    assert [j.id for j in await b.list(JobState.QUEUED, None, 10)] == ["job-4", "job-3"]
    counts = {JobState.QUEUED: 2, JobState.RUNNING: 0, JobState.SUCCEEDED: 1, JobState.FAILED: 0, JobState.CANCELLED: 1}
    assert await a.count_by_state() == counts, "every gateway's jobs, every state listed"
    assert await a.purge(finished_before=NOW + 10) == 1, "only job-2 finished before"
    assert await a.get("job-2") is None and await a.get("job-1") is not None
    assert (await b.submit(_job(9, key="key-2"), 10))[1], "the purged job's key is free again"


async def test_notifications_wake_a_watcher_on_another_gateway(stores: tuple[PostgresJobStore, ...]) -> None:
    a, b = stores
    feed, queued, cancels = JobFeed(), asyncio.Event(), asyncio.Queue[str]()
    follower = asyncio.create_task(b.follow(Listener(feed.notify, cancels.put_nowait, queued.set)))
    try:
        await asyncio.wait_for(queued.wait(), 10)  # reported once it listens
        queued.clear()
        await a.submit(_job(1), 10)
        await asyncio.wait_for(queued.wait(), 10)
        job = await _claimed(a)
        seen: list[object] = []

        async def follow_the_job() -> None:
            async for item in watch(b, feed, job.id, 0):  # no poll: only notifications wake it
                seen.append(item)

        watcher = asyncio.create_task(follow_the_job())
        for seq in (1, 2, 3):
            await asyncio.sleep(0.05)  # the watcher is asleep again
            await a.append_event(job.id, 1, seq, f"event {seq}".encode())
            async with asyncio.timeout(10):
                while len(seen) < seq:
                    await asyncio.sleep(0.01)
        await b.request_cancel(job.id, NOW)
        assert await asyncio.wait_for(cancels.get(), 10) == job.id
        await a.finish(job.id, Outcome(JobState.CANCELLED, 1, "cancelled while running"), NOW + 1)
        await asyncio.wait_for(watcher, 10)
    finally:
        follower.cancel()
    final = seen[-1]
    assert isinstance(final, JobRecord) and final.state is JobState.CANCELLED
    assert [getattr(e, "payload", None) for e in seen[:-1]] == [b"event 1", b"event 2", b"event 3"]


class Pipeline:
    """A scripted Generate pipeline: a delta every 20 ms, for ever; counts the runs that were stopped."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopped = 0

    async def answer(
        self, request: gateway_pb2.GatewayRequest, _: float | None, allowed_tools: frozenset[str]
    ) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        self.started.set()
        try:
            for i in range(100_000):
                yield gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(text=f"{i} "))
                await asyncio.sleep(0.02)
        except (asyncio.CancelledError, GeneratorExit):
            self.stopped += 1
            raise


async def _running(runtime: JobRuntime, pipeline: Pipeline) -> JobRecord:
    job = await runtime.submit(gateway_pb2.GatewayRequest(question="q").SerializeToString(), "", 0)
    await asyncio.wait_for(pipeline.started.wait(), 10)
    return job


async def test_a_cancel_on_one_gateway_stops_the_run_on_another(postgres_url: str) -> None:
    runner, other = Pipeline(), Pipeline()
    # Leases of 30 s: no heartbeat (every 10 s) comes before the cancel is through, only the NOTIFY.
    b = JobRuntime(JobConfig(postgres_url, workers=1, lease_s=30.0), runner.answer)
    a = JobRuntime(JobConfig(postgres_url, workers=1, lease_s=30.0), other.answer)
    await b.start()
    try:
        job = await _running(b, runner)
        await a.start()
        started = time.monotonic()
        cancelled = await a.cancel(job.id)
        assert cancelled.state is JobState.CANCELLED and cancelled.error_message == "cancelled while running"
        assert time.monotonic() - started < 5.0
        assert runner.stopped == 1 and not other.started.is_set()
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def _events(db: psycopg.AsyncConnection[tuple[int]]) -> int:
    row = await (await db.execute("SELECT COUNT(*) FROM events")).fetchone()
    assert row is not None
    return row[0]


async def test_a_gateway_that_lost_a_lease_stops_the_run_and_writes_nothing(postgres_url: str) -> None:
    pipeline = Pipeline()
    runtime = JobRuntime(JobConfig(postgres_url, workers=1, lease_s=0.6), pipeline.answer)
    await runtime.start()
    try:
        job = await _running(runtime, pipeline)
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
            # What another gateway's takeover leaves in the row: its own name, the next attempt.
            await db.execute(
                "UPDATE jobs SET owner = 'elsewhere', attempts = 2, lease_until = lease_until + 3600 WHERE id = %s",
                (job.id,),
            )
            events = await _events(db)
            async with asyncio.timeout(5):
                while not pipeline.stopped:  # the next heartbeat (every 0.2 s) or write finds the lease lost
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            assert await _events(db) == events, "not one event after the lease was taken"
        record = await runtime.get(job.id)
        assert record.state is JobState.RUNNING and record.attempts == 2, "the new holder's run is left alone"
    finally:
        await runtime.stop()


def test_a_postgres_url_picks_the_shared_store_and_logs_without_its_password() -> None:
    config = JobConfig("postgresql://genmesh:s3cret@db.internal:5432/jobs", lease_s=2.0)
    assert isinstance(make_store(config), PostgresJobStore) and isinstance(
        make_store(JobConfig("j.db")), SqliteJobStore
    )
    assert config.db_label == "postgresql://genmesh:***@db.internal:5432/jobs"
