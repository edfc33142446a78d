"""The JobStore interface every job store implements, and the errors they share.

Two implementations: ``sqlite_store.SqliteJobStore`` (a file of one gateway, the embedded default) and
``postgres_store.PostgresJobStore`` (one queue shared by any number of gateways, with leases).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.jobs.model import JobEvent, JobRecord, JobState, NewJob, Outcome, RecoveryReport
from genmesh.errors import NotFound, Reason, ResourceExhausted, quote

CANCELLED_CODE = 1  # google.rpc.Code CANCELLED
ABORTED_CODE = 10  # google.rpc.Code ABORTED

#: The columns of a stored job, in the order ``record_of`` reads them.
COLUMNS = (
    "seq, id, state, priority, idempotency_key, request, created, started, finished, attempts,"
    " cancel_requested, error_code, error_message, result, seq_base, owner_key, allowed_tools, traceparent"
)


class QueueFull(ResourceExhausted):
    """SubmitJob found --job-queue-max jobs waiting."""

    def __init__(self, queued: int) -> None:
        super().__init__(
            f"the job queue is full ({queued} jobs waiting); retry later",
            reason=Reason.JOB_QUEUE_FULL,
            metadata={"queuedJobs": str(queued)},
        )
        self.queued = queued


class JobNotFound(NotFound):
    """No job has the id (any more)."""

    reason = Reason.JOB_NOT_FOUND

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {quote(job_id)} (it may have expired)")


class LeaseLost(Exception):
    """This gateway no longer holds the job's lease: another one took it over; the run must stop, writing nothing.

    Internal to the worker pool; never reaches a client."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the lease of job {job_id!r} was lost")


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a heartbeat found: jobs no longer this gateway's to run, and jobs whose cancel was requested."""

    lost: frozenset[str]
    cancel_requested: frozenset[str]


@dataclass(frozen=True, slots=True)
class Listener:
    """Where a shared store reports what other gateways did, as it learns it."""

    #: A job has new events or a new state.
    changed: Callable[[str], None]
    #: A cancel was requested for a running job.
    cancel_requested: Callable[[str], None]
    #: A job joined the queue (or may have: notifications were missed).
    queued: Callable[[], None]


class JobStore(Protocol):
    """What the job runtime needs from a store. Every method is atomic."""

    #: Whether other gateways share the store: they take over a job whose lease expired, so ``recover``
    #: runs periodically, not only at start.
    shared: bool

    async def open(self) -> None:
        """Create or open the store."""

    async def close(self) -> None:
        """Release it."""

    async def submit(self, job: NewJob, queue_max: int) -> tuple[JobRecord, bool]:
        """Commit ``job`` as QUEUED → (job, True); or the owner's existing job of its idempotency key → (job, False).

        Raises QueueFull when ``queue_max`` jobs are queued, InvalidArgument when the key names a job with
        a different request."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""

    async def claim_next(self, now: float) -> JobRecord | None:
        """Mark the queued job of highest priority, oldest first, RUNNING (attempts + 1) and return it;
        the events of an earlier, interrupted attempt are dropped. A shared store leases it to this gateway."""

    async def append_event(self, job_id: str, attempt: int, seq: int, payload: bytes) -> None:
        """Persist one event of a run; LeaseLost when that attempt is no longer this gateway's to run."""

    async def finish(self, job_id: str, outcome: Outcome, now: float) -> JobRecord | None:
        """Record the end of a RUNNING job's run; None when it is not running here (any more)."""

    async def renew(self, job_ids: Collection[str]) -> Renewal:
        """The heartbeat of the jobs running here: extend their leases; which were lost, which to cancel."""

    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        """Cancel a QUEUED job at once, or flag a RUNNING one (its worker ends it); None when unknown."""

    async def requeue(self, job_id: str) -> None:
        """Put a job running here back in the queue without counting the attempt (graceful shutdown)."""

    async def snapshot(self, job_id: str, after_seq: int, limit: int) -> tuple[JobRecord | None, list[JobEvent]]:
        """The job and up to ``limit`` of its events after ``after_seq``, the job read first."""

    async def list(
        self, state: JobState | None, before_seq: int | None, limit: int, owner: str | None = None
    ) -> list[JobRecord]:
        """Jobs newest first (by ``seq``), optionally of one state and of one ``owner``, older than ``before_seq``."""

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, 0 included)."""

    async def recover(self, max_attempts: int, now: float) -> RecoveryReport:
        """Jobs whose gateway died while they ran go back to the queue, or fail once they ran ``max_attempts``
        times, or end CANCELLED when a cancel was under way. One gateway's file: every RUNNING job (at start);
        a shared store: those whose lease expired."""

    async def purge(self, finished_before: float) -> int:
        """Delete jobs (and their events) that finished before ``finished_before``; returns how many."""

    async def follow(self, listener: Listener) -> None:
        """Report other gateways' changes to ``listener`` until cancelled; returns at once when there are none."""


def record_of(row: Any) -> JobRecord:
    """The job of a row of ``COLUMNS``."""
    return JobRecord(
        seq=row[0],
        id=row[1],
        state=JobState(row[2]),
        priority=row[3],
        idempotency_key=row[4] or "",
        request=bytes(row[5]),
        created=row[6],
        started=row[7],
        finished=row[8],
        attempts=row[9],
        cancel_requested=bool(row[10]),
        error_code=row[11],
        error_message=row[12],
        result=bytes(row[13]),
        seq_base=row[14],
        owner=row[15],
        allowed_tools=frozenset(json.loads(row[16])),
        traceparent=row[17],
    )


def tools_column(allowed_tools: frozenset[str]) -> str:
    """How a job's allowed tools are stored: a JSON array, sorted ("[]": every tool)."""
    return json.dumps(sorted(allowed_tools))
