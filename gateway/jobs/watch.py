"""WatchJob's stream: replay a job's stored events, then follow new ones live, then its final state.

Watchers hold no buffer of events: a watcher reads the store from its last sequence number and sleeps
on the job's wake-up until a worker stores more, so a slow watcher costs nothing but its cursor. With a
shared store the wake-up comes from another gateway's NOTIFY, and a poll every ``poll_s`` is the safety net.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.jobs.model import JobEvent, JobRecord
from gateway.jobs.store import JobNotFound, JobStore
from genmesh.tasks import wait_within

#: Events read from the store at a time.
BATCH = 256


class JobFeed:
    """Wakes the watchers of a job when it has new events or a new state."""

    def __init__(self) -> None:
        self._wakeups: dict[str, asyncio.Event] = {}

    def wakeup(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next change; take it before reading the store."""
        return self._wakeups.setdefault(job_id, asyncio.Event())

    def notify(self, job_id: str) -> None:
        """The job changed (after the change was committed)."""
        wakeup = self._wakeups.pop(job_id, None)
        if wakeup is not None:
            wakeup.set()


async def watch(
    store: JobStore, feed: JobFeed, job_id: str, after_seq: int, poll_s: float | None = None
) -> AsyncIterator[JobEvent | JobRecord]:
    """The job's events after ``after_seq`` as stored and as they come, then the job in its final state.

    ``poll_s``: read the store at least that often even without a wake-up (None: only on wake-ups)."""
    last = after_seq
    while True:
        wakeup = feed.wakeup(job_id)
        # The job is read before its events: when it is final, every event was committed before.
        job, events = await store.snapshot(job_id, last, BATCH)
        if job is None:
            raise JobNotFound(job_id)
        for event in events:
            yield event
            last = event.seq
        if len(events) == BATCH:
            continue
        if job.state.final:
            yield job
            return
        await wait_within(wakeup.wait(), poll_s)
