"""A process that writes to a job store until it is killed: the crashing half of the store's durability test.

Run as ``python -m support.jobs_writer DB``. It finishes one job, leaves a second one RUNNING, then appends
that job's events and queues new jobs for ever, printing one line after each commit (its acknowledgements).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.jobs.model import JobState, NewJob, Outcome
from gateway.jobs.sqlite_store import SqliteJobStore

NOW = 1_800_000_000.0
DONE = "job-done"
RUNNING = "job-running"
QUEUE_MAX = 1_000_000


def _ack(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def write_until_killed(db: Path) -> None:
    """The writes the test checks after the kill; never returns."""
    store = SqliteJobStore(db)
    await store.open()
    await store.submit(NewJob(DONE, b"done", "", 0, NOW), QUEUE_MAX)
    await store.claim_next(NOW + 1)
    await store.finish(DONE, Outcome(JobState.SUCCEEDED, result=b"result"), NOW + 2)
    _ack("finished")
    await store.submit(NewJob(RUNNING, b"running", "", 0, NOW + 3), QUEUE_MAX)
    await store.claim_next(NOW + 4)
    _ack("claimed")
    n = 0
    while True:
        n += 1
        await store.append_event(RUNNING, 1, n, f"event {n}".encode())
        _ack(f"event {n}")
        await store.submit(NewJob(f"job-{n}", f"request {n}".encode(), f"key-{n}", 0, NOW + 5), QUEUE_MAX)
        _ack(f"queued {n}")


if __name__ == "__main__":
    asyncio.run(write_until_killed(Path(sys.argv[1])))
