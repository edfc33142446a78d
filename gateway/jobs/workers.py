"""The worker pool: N asyncio workers that take jobs by priority then age and run Generate's pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc

from gateway.jobs.model import JobRecord, JobState, Outcome
from gateway.jobs.result import ResultCollector
from gateway.jobs.store import CANCELLED_CODE, JobStore, LeaseLost
from gateway.jobs.tracing import traced_run
from gateway.jobs.watch import JobFeed
from gateway.metrics import GatewayMetrics
from genmesh.errors import GenmeshError
from genmesh.logs import REQUEST_ID
from genmesh.status import code_value, status_code_of
from genmesh.tasks import cancel_and_wait, wait_within
from genmesh.v1 import gateway_pb2

log = logging.getLogger("genmesh.gateway.jobs")

#: The pipeline: ``Orchestrator.answer(request, time_remaining, allowed_tools)``; a job's run calls the tools its
#: owner key could call when it was submitted.
Answer = Callable[[gateway_pb2.GatewayRequest, float | None, frozenset[str]], AsyncIterator[gateway_pb2.GatewayEvent]]
#: Pause before a worker claims again after the store failed.
CLAIM_RETRY_S = 1.0


class WorkerPool:
    """Runs queued jobs, ``workers`` at a time, and cancels a running one on request.

    Every ``lease_s / 3`` a heartbeat renews the leases of the jobs running here; a run whose lease was lost
    (another gateway took the job over) or could not be renewed in time stops at once and writes nothing.
    """

    def __init__(
        self,
        store: JobStore,
        feed: JobFeed,
        answer: Answer,
        workers: int,
        timeout_s: float,
        lease_s: float,
    ) -> None:
        self._store = store
        self._feed = feed
        self._answer = answer
        self._workers = workers
        self._timeout_s = timeout_s
        self._lease_s = lease_s
        # Idle workers wait on a future each; ``queued`` wakes one. The generation tells a worker whose claim
        # found nothing whether a job was queued meanwhile.
        self._idle: deque[asyncio.Future[None]] = deque()
        self._generation = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[object]] = {}
        self._cancelling: set[str] = set()
        self._lost: set[str] = set()
        #: When each running job's lease ends unless renewed (monotonic clock).
        self._lease_end: dict[str, float] = {}
        self._mean_run_s = 0.0
        self.metrics: GatewayMetrics | None = None
        """Where finished runs are counted (set when the gateway serves metrics)."""

    def start(self) -> None:
        """Start the workers (each claims at once) and the heartbeat."""
        self._tasks = [asyncio.create_task(self._work(), name=f"job-worker-{i}") for i in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="job-heartbeat"))

    def queued(self) -> None:
        """A job joined the queue, here or on another gateway: an idle worker claims."""
        self._generation += 1
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def retry_after_s(self) -> float:
        """About how long until a queue slot frees: the mean run time over the number of workers."""
        if not self._mean_run_s:
            return 1.0
        return min(30.0, max(0.1, self._mean_run_s / self._workers))

    async def cancel(self, job_id: str, wait_s: float = 5.0) -> None:
        """Cancel the job's run if it is running here, and wait (a while) until the run recorded it."""
        first = job_id not in self._cancelling
        self._cancelling.add(job_id)  # also seen by a worker that claimed the job but has not started it yet
        task = self._running.get(job_id)
        if task is None:
            return
        if first:  # once: a second cancel must not interrupt the run while it records its end
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # the run's own cancellation
            await wait_within(asyncio.shield(task), wait_s)

    def interrupt(self, job_id: str) -> None:
        """A cancel was requested on another gateway: cancel the job's run if it runs here (it records it)."""
        task = self._running.get(job_id)
        if task is not None and job_id not in self._cancelling:
            self._cancelling.add(job_id)
            task.cancel()

    async def stop(self) -> None:
        """Stop the workers; runs in progress are cancelled and their jobs go back to the queue."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    async def _work(self) -> None:
        while True:
            if _stopping():  # the pool's cancel reached the run this worker awaited, which ended without raising
                raise asyncio.CancelledError
            job = await self._next_job()
            self._feed.notify(job.id)
            run = asyncio.create_task(traced_run(job, functools.partial(self._run, job)), name=f"job-{job.id}")
            try:
                await run
            except asyncio.CancelledError:
                if _stopping():
                    raise
                # Only the job's own run was cancelled: this worker goes on.
            except Exception:
                log.exception("job worker error", extra={"job": job.id})
            finally:
                if self._running.get(job.id, run) is run:  # not a later run of the job, claimed again
                    self._running.pop(job.id, None)
                    self._cancelling.discard(job.id)
                    self._lost.discard(job.id)
                    self._lease_end.pop(job.id, None)

    async def _next_job(self) -> JobRecord:
        """Claim until a job comes, sleeping while the queue is empty."""
        while True:
            generation, claimed_at = self._generation, time.monotonic()
            try:
                job = await self._claim()
            except Exception:
                log.exception("claiming a job failed")
                await asyncio.sleep(CLAIM_RETRY_S)
                continue
            if job is not None:
                self._lease_end[job.id] = claimed_at + self._lease_s
                return job
            if generation == self._generation:  # nothing was queued since the claim began
                waiter = asyncio.get_running_loop().create_future()
                self._idle.append(waiter)
                await waiter

    async def _heartbeat(self) -> None:
        """Renew the leases of the jobs running here; stop the runs lost, or cancelled on another gateway."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            jobs = list(self._running)
            if not jobs:
                continue
            sent = time.monotonic()
            cancel: set[str] = set()
            try:
                renewal = await self._store.renew(jobs)
            except Exception:
                log.exception("renewing the leases of running jobs failed")
                # Past its lease end another gateway may run the job (a shared store): stop without writing.
                now = time.monotonic()
                lost = {j for j in jobs if self._store.shared and self._lease_end.get(j, sent) <= now}
            else:
                self._lease_end.update((j, sent + self._lease_s) for j in jobs if j in self._lease_end)
                lost, cancel = set(renewal.lost), set(renewal.cancel_requested)
            for job_id in lost:
                if (task := self._running.get(job_id)) is not None and not task.done():
                    log.warning("job lease lost; its run stops here", extra={"job": job_id})
                    self._lost.add(job_id)
                    task.cancel()
            for job_id in cancel - lost:
                self.interrupt(job_id)
            self._cancelling &= set(self._running)  # cancels of jobs that ran on other gateways

    async def _claim(self) -> JobRecord | None:
        """The next job, marked running; when the pool stops meanwhile, the job goes back to the queue."""
        claim = asyncio.ensure_future(self._store.claim_next(time.time()))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            job = await claim  # the transaction runs to its end on the store's thread anyway
            if job is not None:
                await self._store.requeue(job.id)
            raise

    async def _run(self, job: JobRecord) -> Outcome | None:
        """One attempt of ``job``: its outcome, recorded; None when another gateway took the job over."""
        request = gateway_pb2.GatewayRequest.FromString(job.request)
        if not request.request_id:
            request.request_id = job.id
        token = REQUEST_ID.set(request.request_id)
        started = time.perf_counter()
        collector = ResultCollector()
        seq = job.seq_base
        log.info("job started", extra={"job": job.id, "attempt": job.attempts})
        # Registered from inside the task, so that a cancel always finds it started (a task cancelled
        # before its first step would never record its end).
        task = asyncio.current_task()
        assert task is not None
        self._running[job.id] = task
        try:
            if job.id in self._cancelling:  # cancelled between the claim and now
                raise asyncio.CancelledError
            outcome = Outcome(
                JobState.FAILED,
                code_value(grpc.StatusCode.DEADLINE_EXCEEDED),
                f"the job ran longer than {self._timeout_s} s",
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    async for event in self._answer(request, self._timeout_s, job.allowed_tools):
                        seq += 1
                        await self._store.append_event(job.id, job.attempts, seq, event.SerializeToString())
                        collector.add(event)
                        self._feed.notify(job.id)
                    outcome = _succeeded(collector)
        except asyncio.CancelledError:
            if job.id in self._lost:  # another gateway runs it now
                raise
            if job.id not in self._cancelling:  # the gateway is stopping: run it again next time
                await self._store.requeue(job.id)
                log.info("job requeued", extra={"job": job.id})
                raise
            outcome = Outcome(JobState.CANCELLED, CANCELLED_CODE, "cancelled while running")
        except LeaseLost:
            log.warning("job lease lost; its run stops here", extra={"job": job.id})
            return None
        except GenmeshError as error:
            outcome = Outcome(JobState.FAILED, code_value(status_code_of(error)), error.message)
        except Exception as error:
            log.exception("job failed", extra={"job": job.id})
            outcome = Outcome(JobState.FAILED, code_value(grpc.StatusCode.INTERNAL), f"internal error: {error}")
        finally:
            REQUEST_ID.reset(token)
        await self._store.finish(job.id, outcome, time.time())
        self._feed.notify(job.id)
        elapsed = time.perf_counter() - started
        self._mean_run_s = elapsed if not self._mean_run_s else 0.8 * self._mean_run_s + 0.2 * elapsed
        if self.metrics is not None:
            self.metrics.job_finished(outcome.state, elapsed)
        log.info("job finished", extra={"job": job.id, "state": outcome.state.name, "duration_s": round(elapsed, 3)})
        return outcome


def _stopping() -> bool:
    """Whether the current task itself is being cancelled (the pool stops), not just a task it awaited.

    A worker awaits its run, so the pool's cancel is passed on to the run; a run may end without raising it
    (a cancel requested for the job at the same moment records CANCELLED; Python 3.11's asyncio.wait_for returns
    a result that arrived with the cancel): the worker must still stop, or ``stop`` waits for ever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _succeeded(collector: ResultCollector) -> Outcome:
    if not collector.completed:
        return Outcome(JobState.FAILED, code_value(grpc.StatusCode.INTERNAL), "the pipeline ended without a completion")
    return Outcome(JobState.SUCCEEDED, result=collector.result().SerializeToString())
