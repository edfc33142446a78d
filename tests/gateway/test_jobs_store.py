"""The SQLite job store on a temporary file: queue order, idempotency, bounds, cancel, recovery, retention."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from support import jobs_writer

from gateway.jobs.model import JobState, NewJob, Outcome
from gateway.jobs.sqlite_store import SqliteJobStore
from gateway.jobs.store import QueueFull
from genmesh.errors import InvalidArgument

NOW = 1_800_000_000.0
TESTS = Path(__file__).resolve().parents[1]
WRITES = 200  # events and jobs the killed writer acknowledges at least


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    opened = SqliteJobStore(tmp_path / "jobs.db")
    await opened.open()
    yield opened
    await opened.close()


def _job(n: int, priority: int = 0, key: str = "", request: bytes = b"") -> NewJob:
    return NewJob(f"job-{n}", request or f"request {n}".encode(), key, priority, NOW + n)


async def test_the_database_is_in_wal_mode(store: SqliteJobStore, tmp_path: Path) -> None:
    await store.submit(_job(1), 10)
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_jobs_are_claimed_by_priority_then_age(store: SqliteJobStore) -> None:
    for n, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1)]:
        await store.submit(_job(n, priority), 10)
    order = []
    while (job := await store.claim_next(NOW + 100)) is not None:
        assert job.state is JobState.RUNNING and job.attempts == 1 and job.started == NOW + 100
        order.append(job.id)
    assert order == ["job-2", "job-4", "job-1", "job-3", "job-5"]


async def test_an_idempotency_key_names_one_job(store: SqliteJobStore) -> None:
    first, created = await store.submit(_job(1, key="k"), 10)
    again, created_again = await store.submit(_job(2, key="k", request=b"request 1"), 10)
    assert created and not created_again and again == first
    with pytest.raises(InvalidArgument) as caught:
        await store.submit(_job(3, key="k", request=b"another request"), 10)
    assert caught.value.violations[0].field == "idempotency_key"
    assert [j.id for j in await store.list(None, None, 10)] == ["job-1"]


async def test_a_full_queue_refuses_new_jobs_but_not_known_keys(store: SqliteJobStore) -> None:
    await store.submit(_job(1, key="a"), 2)
    await store.submit(_job(2), 2)
    with pytest.raises(QueueFull):
        await store.submit(_job(3), 2)
    assert (await store.submit(_job(4, key="a", request=b"request 1"), 2))[0].id == "job-1"
    await store.claim_next(NOW)  # a running job no longer takes a queue slot
    await store.submit(_job(5), 2)


async def test_events_are_kept_in_order_and_a_finished_job_keeps_its_result(store: SqliteJobStore) -> None:
    await store.submit(_job(1), 10)
    job = await store.claim_next(NOW)
    assert job is not None
    for seq in (1, 2, 3):
        await store.append_event(job.id, job.attempts, seq, f"event {seq}".encode())
    done = await store.finish(job.id, Outcome(JobState.SUCCEEDED, result=b"result"), NOW + 1)
    assert done is not None and done.state is JobState.SUCCEEDED and done.result == b"result"
    assert done.finished == NOW + 1
    record, events = await store.snapshot(job.id, 1, 10)
    assert record == done and [(e.seq, e.payload) for e in events] == [(2, b"event 2"), (3, b"event 3")]
    assert await store.finish(job.id, Outcome(JobState.FAILED, 13, "late"), NOW + 2) is None, "final is final"


async def test_cancel_ends_a_queued_job_and_flags_a_running_one(store: SqliteJobStore) -> None:
    await store.submit(_job(1), 10)
    await store.submit(_job(2), 10)
    running = await store.claim_next(NOW)
    assert running is not None and running.id == "job-1"
    queued = await store.request_cancel("job-2", NOW + 1)
    assert queued is not None and queued.state is JobState.CANCELLED and queued.finished == NOW + 1
    flagged = await store.request_cancel("job-1", NOW + 1)
    assert flagged is not None and flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert await store.claim_next(NOW) is None
    assert await store.request_cancel("job-404", NOW) is None


async def test_jobs_are_counted_by_state_every_state_listed(store: SqliteJobStore) -> None:
    assert await store.count_by_state() == dict.fromkeys(JobState, 0)
    for n in range(1, 5):
        await store.submit(_job(n), 10)
    first, second = await store.claim_next(NOW), await store.claim_next(NOW)
    assert first is not None and second is not None
    await store.finish(first.id, Outcome(JobState.SUCCEEDED), NOW + 1)
    await store.request_cancel("job-4", NOW + 1)
    assert await store.count_by_state() == {
        JobState.QUEUED: 1,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 1,
        JobState.FAILED: 0,
        JobState.CANCELLED: 1,
    }


async def test_recovery_requeues_running_jobs_until_their_attempts_run_out(store: SqliteJobStore) -> None:
    for n in range(1, 5):
        await store.submit(_job(n), 10)
    first = await store.claim_next(NOW)  # job-1: attempt 1
    assert first is not None
    await store.append_event(first.id, 1, 1, b"partial")
    await store.claim_next(NOW)  # job-2: attempt 1, cancel under way
    await store.request_cancel("job-2", NOW)
    report = await store.recover(max_attempts=2, now=NOW + 1)
    assert (report.requeued, report.failed, report.cancelled, report.queued) == (1, 0, 1, 3)
    assert (await store.get("job-2")).state is JobState.CANCELLED  # type: ignore[union-attr]

    retried = await store.claim_next(NOW + 2)
    assert retried is not None and retried.id == "job-1" and retried.attempts == 2
    assert retried.seq_base == 1, "the next attempt's events follow the interrupted one's numbers"
    assert (await store.snapshot("job-1", 0, 10))[1] == [], "the interrupted attempt's events are gone"

    report = await store.recover(max_attempts=2, now=NOW + 3)
    assert (report.requeued, report.failed, report.queued) == (0, 1, 2)
    failed = await store.get("job-1")
    assert failed is not None and failed.state is JobState.FAILED and failed.finished == NOW + 3
    assert failed.error_message == "gave up: the gateway stopped during attempt 2, the last of 2 (--job-max-attempts)"


async def test_a_store_killed_mid_write_keeps_every_acknowledged_commit(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "support.jobs_writer", str(db), stdout=asyncio.subprocess.PIPE, env=env
    )
    assert writer.stdout is not None
    acks: list[str] = []
    try:
        while len(acks) < 2 + 2 * WRITES:  # it finished a job, claimed one, then writes in a loop
            line = await asyncio.wait_for(writer.stdout.readline(), 60)
            assert line, "the writer ended on its own"
            acks.append(line.decode().strip())
    finally:
        if writer.returncode is None:
            writer.kill()  # SIGKILL while it writes: no close, no checkpoint, a transaction may be open
        rest, _ = await writer.communicate()
    assert writer.returncode == -signal.SIGKILL
    acks += rest.decode().splitlines()
    assert acks[:2] == ["finished", "claimed"]
    acked_events = sum(a.startswith("event ") for a in acks)
    acked_jobs = sum(a.startswith("queued ") for a in acks)

    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store = SqliteJobStore(db)
    await store.open()
    try:
        _, events = await store.snapshot(jobs_writer.RUNNING, 0, 10**6)
        queued = await store.list(JobState.QUEUED, None, 10**6)
        # Every acknowledged write is there, in order; at most the one write in flight at the kill is extra.
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [j.id for j in reversed(queued)] == [f"job-{n}" for n in range(1, len(queued) + 1)]
        assert (len(events) - acked_events) + (len(queued) - acked_jobs) in (0, 1), (acked_events, acked_jobs)

        report = await store.recover(max_attempts=3, now=NOW + 100)
        assert (report.requeued, report.failed, report.cancelled, report.queued) == (1, 0, 0, len(queued) + 1)
        done = await store.get(jobs_writer.DONE)
        assert done is not None and done.state is JobState.SUCCEEDED and done.attempts == 1, done
        assert done.finished == jobs_writer.NOW + 2 and done.result == b"result", "a finished job is left as it was"
        retried = await store.claim_next(NOW + 101)
        assert retried is not None and retried.id == jobs_writer.RUNNING and retried.attempts == 2
        assert retried.seq_base == len(events), "the next attempt numbers its events after the killed one's"
    finally:
        await store.close()


async def test_retention_purges_finished_jobs_and_their_events_only(store: SqliteJobStore) -> None:
    for n in range(1, 4):
        await store.submit(_job(n, key=f"key-{n}"), 10)
    for finished_at in (NOW + 10, NOW + 20):
        job = await store.claim_next(NOW)
        assert job is not None
        await store.append_event(job.id, 1, 1, b"event")
        await store.finish(job.id, Outcome(JobState.SUCCEEDED), finished_at)
    assert await store.purge(finished_before=NOW + 15) == 1
    assert await store.get("job-1") is None and (await store.snapshot("job-1", 0, 10)) == (None, [])
    assert await store.get("job-2") is not None and await store.get("job-3") is not None
    # The purged job's key is free again.
    assert (await store.submit(_job(9, key="key-1"), 10))[1]


async def test_listing_pages_newest_first_by_state(store: SqliteJobStore) -> None:
    for n in range(1, 8):
        await store.submit(_job(n), 10)
    await store.claim_next(NOW)
    newest = await store.list(None, None, 3)
    assert [j.id for j in newest] == ["job-7", "job-6", "job-5"]
    assert [j.id for j in await store.list(None, newest[-1].seq, 10)] == ["job-4", "job-3", "job-2", "job-1"]
    assert [j.id for j in await store.list(JobState.RUNNING, None, 10)] == ["job-1"]


async def test_a_requeued_job_keeps_its_attempt_count(store: SqliteJobStore) -> None:
    await store.submit(_job(1), 10)
    await store.claim_next(NOW)
    await store.requeue("job-1")  # a graceful stop: the attempt is not counted
    job = await store.get("job-1")
    assert job is not None and job.state is JobState.QUEUED and job.attempts == 0
    again = await store.claim_next(NOW)
    assert again is not None and again.attempts == 1
