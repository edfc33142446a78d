"""The jobs of one gateway: store, recovery at start, worker pool, watchers, retention."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from gateway.jobs.config import JobConfig
from gateway.jobs.model import JobEvent, JobRecord, JobState, NewJob
from gateway.jobs.store import JobNotFound, JobStore, QueueFull, SqliteJobStore
from gateway.jobs.watch import JobFeed, watch
from gateway.jobs.workers import Answer, WorkerPool
from genmesh.errors import Unavailable
from genmesh.tasks import cancel_and_wait

log = logging.getLogger("genmesh.gateway.jobs")

#: Longest pause between two retention sweeps.
MAX_PURGE_INTERVAL_S = 60.0


class JobRuntime:
    """Everything JobService needs; usable once ``start`` returned."""

    def __init__(self, config: JobConfig, answer: Answer, store: JobStore | None = None) -> None:
        self.config = config
        self._store = store or SqliteJobStore(config.db_path)
        self._feed = JobFeed()
        self._pool = WorkerPool(self._store, self._feed, answer, config.workers, config.timeout_s)
        self._started = False
        self._purger: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the store, recover what a dead gateway left running, start the workers."""
        await self._store.open()
        report = await self._store.recover(self.config.max_attempts, time.time())
        log.info(
            "jobs recovered",
            extra={
                "db": str(self.config.db_path),
                "requeued": report.requeued,
                "failed": report.failed,
                "cancelled": report.cancelled,
                "queued": report.queued,
            },
        )
        await self._purge()
        self._pool.start(report.queued)
        self._purger = asyncio.create_task(self._purge_forever())
        self._started = True

    async def stop(self) -> None:
        """Stop the workers (their jobs go back to the queue) and close the store."""
        if not self._started:
            return
        self._started = False
        await cancel_and_wait(self._purger)
        await self._pool.stop()
        await self._store.close()

    def _ready(self) -> JobStore:
        if not self._started:
            raise Unavailable("the gateway's job queue is still starting")
        return self._store

    async def submit(self, request: bytes, idempotency_key: str, priority: int) -> JobRecord:
        """Queue a job (committed when this returns), or return the one the idempotency key names."""
        job = NewJob(f"job-{uuid.uuid4().hex}", request, idempotency_key, priority, time.time())
        try:
            record, created = await self._ready().submit(job, self.config.queue_max)
        except QueueFull as full:
            full.retry_after_s = self._pool.retry_after_s()
            raise
        if created:
            self._pool.queued()
        return record

    async def get(self, job_id: str) -> JobRecord:
        """The job; NotFound when unknown or expired."""
        record = await self._ready().get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job; a finished one is returned as it is."""
        record = await self._ready().request_cancel(job_id, time.time())
        if record is None:
            raise JobNotFound(job_id)
        if record.state is JobState.RUNNING:
            await self._pool.cancel(job_id)
            record = await self.get(job_id)
        self._feed.notify(job_id)
        return record

    async def list(self, state: JobState | None, before_seq: int | None, limit: int) -> list[JobRecord]:
        """A page of jobs, newest first."""
        return await self._ready().list(state, before_seq, limit)

    def watch(self, job_id: str, after_seq: int) -> AsyncIterator[JobEvent | JobRecord]:
        """The job's events from ``after_seq`` on, live, then the job in its final state."""
        return watch(self._ready(), self._feed, job_id, after_seq)

    async def _purge(self) -> None:
        purged = await self._store.purge(time.time() - self.config.retention_s)
        if purged:
            log.info("expired jobs purged", extra={"jobs": purged})

    async def _purge_forever(self) -> None:
        interval = min(MAX_PURGE_INTERVAL_S, self.config.retention_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._purge()
            except Exception:
                log.exception("purging expired jobs failed")
