"""The SQLite job store on a temporary file: queue order, idempotency, bounds, cancel, recovery, retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.jobs.model import JobState, NewJob, Outcome
from gateway.jobs.store import QueueFull, SqliteJobStore
from genmesh.errors import InvalidArgument

NOW = 1_800_000_000.0


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    opened = SqliteJobStore(tmp_path / "jobs.db")
    await opened.open()
    yield opened
    await opened.close()


def _job(n: int, priority: int = 0, key: str = "", request: bytes = b"") -> NewJob:
    return NewJob(f"job-{n}", request or f"request {n}".encode(), key, priority, NOW + n)


async def test_the_database_is_in_wal_mode(store: SqliteJobStore, tmp_path: Path) -> None:
    import sqlite3

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


async def test_a_store_reopened_after_a_crash_still_has_every_committed_job(tmp_path: Path) -> None:
    first = SqliteJobStore(tmp_path / "jobs.db")
    await first.open()
    for n in range(1, 4):
        await first.submit(_job(n), 10)
    await first.claim_next(NOW)
    # No close: the next process opens the file as a crashed one left it.
    second = SqliteJobStore(tmp_path / "jobs.db")
    await second.open()
    report = await second.recover(max_attempts=3, now=NOW)
    assert (report.requeued, report.queued) == (1, 3)
    assert sorted(j.id for j in await second.list(JobState.QUEUED, None, 10)) == ["job-1", "job-2", "job-3"]
    await second.close()
    await first.close()


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
