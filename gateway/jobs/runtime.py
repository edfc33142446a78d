"""The jobs of one gateway: store, recovery, worker pool, watchers, retention.

One gateway's SQLite file is recovered once, at start. A Postgres queue is shared: recovery (taking over
the jobs whose lease expired) runs every ``lease / 3``, and the store's notifications wake this gateway's
watchers and workers and pass on cancels requested on other gateways.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

from gateway.jobs.config import JobConfig
from gateway.jobs.model import JobEvent, JobRecord, JobState, NewJob, RecoveryReport
from gateway.jobs.store import JobNotFound, JobStore, Listener, QueueFull
from gateway.jobs.stores import make_store
from gateway.jobs.watch import JobFeed, watch
from gateway.jobs.workers import Answer, WorkerPool
from gateway.metrics import GatewayMetrics
from genmesh.errors import Unavailable
from genmesh.tasks import cancel_and_wait, wait_within
from genmesh.tracing.stored import current_traceparent

log = logging.getLogger("genmesh.gateway.jobs")

#: Longest pause between two retention sweeps.
MAX_PURGE_INTERVAL_S = 60.0
#: A shared store's watchers read it at least this often, should a notification be missed.
POLL_S = 1.0
#: How long CancelJob waits for a running job to record its end.
CANCEL_WAIT_S = 5.0


class JobRuntime:
    """Everything JobService needs; usable once ``start`` returned."""

    def __init__(
        self,
        config: JobConfig,
        answer: Answer,
        store: JobStore | None = None,
    ) -> None:
        self.config = config
        self._store = store or make_store(config)
        self._feed = JobFeed()
        self._pool = WorkerPool(self._store, self._feed, answer, config.workers, config.timeout_s, config.lease_s)
        self._poll_s = POLL_S if self._store.shared else None
        self._started = False
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the store, recover what a dead gateway left running, start the workers."""
        await self._store.open()
        report = await self._recover()
        log.info(
            "jobs recovered",
            extra={
                "db": self.config.db_label,
                "requeued": report.requeued,
                "failed": report.failed,
                "cancelled": report.cancelled,
                "queued": report.queued,
            },
        )
        await self._purge()
        listener = Listener(changed=self._feed.notify, cancel_requested=self._pool.interrupt, queued=self._pool.queued)
        self._background = [
            asyncio.create_task(self._purge_forever()),
            asyncio.create_task(self._store.follow(listener)),
        ]
        if self._store.shared:
            self._background.append(asyncio.create_task(self._recover_forever()))
        self._pool.start()
        self._started = True

    @property
    def metrics(self) -> GatewayMetrics | None:
        """Where finished runs are counted (set when the gateway serves metrics)."""
        return self._pool.metrics

    @metrics.setter
    def metrics(self, metrics: GatewayMetrics | None) -> None:
        self._pool.metrics = metrics

    async def stop(self) -> None:
        """Stop the workers (their jobs go back to the queue) and close the store."""
        if not self._started:
            return
        self._started = False
        await cancel_and_wait(*self._background)
        await self._pool.stop()
        await self._store.close()

    def _ready(self) -> JobStore:
        if not self._started:
            raise Unavailable("the gateway's job queue is still starting")
        return self._store

    async def submit(
        self,
        request: bytes,
        idempotency_key: str,
        priority: int,
        owner: str = "",
        allowed_tools: frozenset[str] = frozenset(),
    ) -> JobRecord:
        """Queue a job of ``owner`` whose run may call ``allowed_tools`` (empty: all), committed when this
        returns; or return the owner's job that the idempotency key names. Its runs continue the current trace."""
        job = NewJob(
            *(f"job-{uuid.uuid4().hex}", request, idempotency_key, priority, time.time(), owner, allowed_tools),
            traceparent=current_traceparent(),
        )
        try:
            record, created = await self._ready().submit(job, self.config.queue_max)
        except QueueFull as full:
            full.retry_after_s = self._pool.retry_after_s()
            raise
        if created:
            self._pool.queued()
        return record

    async def get(self, job_id: str, owner: str | None = None) -> JobRecord:
        """The job; NotFound when unknown or expired, or (``owner`` given) another owner's: the same answer,
        so that a caller learns nothing of other keys' jobs."""
        record = await self._ready().get(job_id)
        if record is None or (owner is not None and record.owner != owner):
            raise JobNotFound(job_id)
        return record

    async def cancel(self, job_id: str, owner: str | None = None) -> JobRecord:
        """Cancel a queued or running job (here or on another gateway); a finished one is returned as it is.
        NotFound as ``get`` says (the owner never changes: checked once, before anything is changed)."""
        if owner is not None:
            await self.get(job_id, owner)
        record = await self._ready().request_cancel(job_id, time.time())
        if record is None:
            raise JobNotFound(job_id)
        if record.state is JobState.RUNNING:
            await self._pool.cancel(job_id, CANCEL_WAIT_S)
            record = await self._settled(job_id, CANCEL_WAIT_S)
        self._feed.notify(job_id)
        return record

    async def _settled(self, job_id: str, wait_s: float) -> JobRecord:
        """The job once final, or as it is after ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            wakeup = self._feed.wakeup(job_id)
            record = await self.get(job_id)
            left = deadline - time.monotonic()
            if record.state.final or left <= 0:
                return record
            await wait_within(wakeup.wait(), min(left, POLL_S))

    async def list(
        self, state: JobState | None, before_seq: int | None, limit: int, owner: str | None = None
    ) -> list[JobRecord]:
        """A page of jobs (of ``owner`` only, when given), newest first."""
        return await self._ready().list(state, before_seq, limit, owner)

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (all gateways' jobs, when they share the store); Unavailable while
        starting."""
        return await self._ready().count_by_state()

    async def watch(self, job_id: str, after_seq: int, owner: str | None = None) -> AsyncIterator[JobEvent | JobRecord]:
        """The job's events from ``after_seq`` on, live, then the job in its final state; NotFound as ``get``."""
        if owner is not None:
            await self.get(job_id, owner)
        async for item in watch(self._ready(), self._feed, job_id, after_seq, self._poll_s):
            yield item

    async def _recover(self) -> RecoveryReport:
        return await self._store.recover(self.config.max_attempts, time.time())

    async def _recover_forever(self) -> None:
        """Take over the jobs of gateways that died; wake workers for what is queued (should a NOTIFY be lost)."""
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                report = await self._recover()
            except Exception:
                log.exception("taking over the jobs of dead gateways failed")
                continue
            if report.requeued or report.failed or report.cancelled:
                log.info(
                    "jobs of a dead gateway taken over",
                    extra={"requeued": report.requeued, "failed": report.failed, "cancelled": report.cancelled},
                )
            for _ in range(min(report.queued, self.config.workers)):
                self._pool.queued()

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
