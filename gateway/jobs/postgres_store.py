"""The JobStore several gateways share: one Postgres database, through a psycopg 3 connection pool.

``claim_next`` takes a queued job with ``SELECT ... FOR UPDATE SKIP LOCKED`` and leases it to this store
(``owner``, ``lease_until`` on the database's clock); ``renew``, the heartbeat, extends the leases of the jobs
running here. Every write of a run checks that the job is still leased to this store for that attempt, so
a gateway that lost a lease writes nothing more. ``recover`` takes back the jobs whose lease expired:
their gateway died. Triggers NOTIFY each change, which ``follow`` passes on to the runtime.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Collection

import psycopg

from gateway.jobs.model import JobEvent, JobRecord, JobState, NewJob, Outcome, RecoveryReport
from gateway.jobs.store import (
    ABORTED_CODE,
    CANCELLED_CODE,
    COLUMNS,
    LeaseLost,
    Listener,
    QueueFull,
    Renewal,
    record_of,
    tools_column,
)
from gateway.postgres import Conn, PostgresPool
from genmesh.errors import InvalidArgument

log = logging.getLogger("genmesh.gateway.jobs")

#: NOTIFY channels (payload: the job id): new events or state; a cancel requested for a running job.
CHANNEL_JOB, CHANNEL_CANCEL = "genmesh_job", "genmesh_job_cancel"
#: NOTIFY channel: a job joined the queue.
CHANNEL_QUEUED = "genmesh_job_queued"
POOL_MAX = 16
RECONNECT_S = 1.0
_SCHEMA_LOCK = 0x67656E6D  # pg_advisory_xact_lock key: gateways starting at once create the schema in turn
_DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT,
    state SMALLINT NOT NULL,
    priority INTEGER NOT NULL,
    request BYTEA NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    error_code INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '',
    result BYTEA NOT NULL DEFAULT '',
    seq_base BIGINT NOT NULL DEFAULT 0,
    owner TEXT, -- the gateway (store) holding the lease; owner_key is the API key the job belongs to
    lease_until DOUBLE PRECISION,
    owner_key TEXT NOT NULL DEFAULT '',
    allowed_tools TEXT NOT NULL DEFAULT '[]',
    traceparent TEXT NOT NULL DEFAULT ''
);
-- A table made before jobs had owners (their rows are the open gateway's: owner_key ''): add the columns,
-- and scope idempotency keys per owner.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'jobs' AND column_name = 'owner_key') THEN
        ALTER TABLE jobs ADD COLUMN owner_key TEXT NOT NULL DEFAULT '',
                         ADD COLUMN allowed_tools TEXT NOT NULL DEFAULT '[]',
                         DROP CONSTRAINT IF EXISTS jobs_idempotency_key_key;
    END IF;
END $$;
-- A table made before jobs kept the trace context of their submission (theirs is ''). Checked first: ALTER TABLE
-- locks the whole table (waiting for every reader, holding up every call after it) even when there is nothing to add.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'jobs' AND column_name = 'traceparent') THEN
        ALTER TABLE jobs ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
    END IF;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (owner_key, idempotency_key);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner_key, seq);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (priority DESC, seq) WHERE state = 1;
CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (lease_until) WHERE state = 2;
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished) WHERE finished IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    payload BYTEA NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE OR REPLACE FUNCTION genmesh_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL_JOB}', NEW.id);
    IF NEW.state = 1 THEN PERFORM pg_notify('{CHANNEL_QUEUED}', ''); END IF;
    IF NEW.state = 2 AND NEW.cancel_requested THEN PERFORM pg_notify('{CHANNEL_CANCEL}', NEW.id); END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION genmesh_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL_JOB}', NEW.job_id);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER jobs_changed AFTER INSERT OR UPDATE OF state, cancel_requested ON jobs
    FOR EACH ROW EXECUTE FUNCTION genmesh_job_changed();
CREATE OR REPLACE TRIGGER events_added AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION genmesh_job_event();
"""

_FINAL = [int(s) for s in JobState if s.final]
#: Jobs whose lease expired: CANCELLED when a cancel was under way, FAILED after their last attempt, else
#: QUEUED again. Rows locked by a live gateway (a heartbeat, an event going in) are left for the next sweep.
_RECOVER = f"""
WITH expired AS (
    SELECT id, CASE WHEN cancel_requested THEN {int(JobState.CANCELLED)}
                    WHEN attempts >= %(max)s THEN {int(JobState.FAILED)} ELSE {int(JobState.QUEUED)} END AS verdict
    FROM jobs WHERE state = {int(JobState.RUNNING)} AND lease_until < {_DB_NOW} FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET
    state = verdict,
    finished = CASE WHEN verdict = {int(JobState.QUEUED)} THEN NULL ELSE %(now)s END,
    error_code = CASE verdict WHEN {int(JobState.CANCELLED)} THEN {CANCELLED_CODE}
                              WHEN {int(JobState.FAILED)} THEN {ABORTED_CODE} ELSE 0 END,
    error_message = CASE verdict
        WHEN {int(JobState.CANCELLED)} THEN 'cancelled; the gateway stopped while the cancel was under way'
        WHEN {int(JobState.FAILED)} THEN 'gave up: the gateway stopped during attempt ' || attempts
            || ', the last of ' || %(max)s || ' (--job-max-attempts)'
        ELSE '' END,
    owner = NULL,
    lease_until = NULL
FROM expired WHERE jobs.id = expired.id
RETURNING verdict
"""


class PostgresJobStore:
    """JobStore on a Postgres database shared by any number of gateways; leases of ``lease_s`` seconds."""

    shared = True

    def __init__(self, url: str, lease_s: float) -> None:
        self._url = url
        self._lease_s = lease_s
        #: This store's name in the ``owner`` column: host, process, and a nonce.
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._db = PostgresPool(url, "job", POOL_MAX)
        #: The jobs leased to this store: id → the attempt it runs.
        self._held: dict[str, int] = {}

    async def open(self) -> None:
        await self._db.open(_SCHEMA, _SCHEMA_LOCK)

    async def close(self) -> None:
        await self._db.close()

    async def submit(self, job: NewJob, queue_max: int) -> tuple[JobRecord, bool]:
        while True:  # again only when the key's job was purged between the insert and the read
            async with self._db.transaction() as conn:
                found = await self._known(conn, job)
                if found is not None:
                    return found, False
                queued = await _scalar(conn, "SELECT COUNT(*) FROM jobs WHERE state = %s", (int(JobState.QUEUED),))
                if queued >= queue_max:
                    raise QueueFull(queued)
                cursor = await conn.execute(
                    "INSERT INTO jobs (id, idempotency_key, state, priority, request, created, owner_key,"
                    " allowed_tools, traceparent) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    f" ON CONFLICT (owner_key, idempotency_key) DO NOTHING RETURNING {COLUMNS}",
                    (
                        *(job.id, job.idempotency_key or None, int(JobState.QUEUED), job.priority, job.request),
                        *(job.created, job.owner, tools_column(job.allowed_tools), job.traceparent),
                    ),
                )
                row = await cursor.fetchone()
                if row is not None:
                    return record_of(row), True
                # Another gateway committed the same key after our read: its job is the one.
                found = await self._known(conn, job)
                if found is not None:
                    return found, False

    async def _known(self, conn: Conn, job: NewJob) -> JobRecord | None:
        """The job its owner stored under ``job``'s idempotency key; InvalidArgument when its request differs."""
        if not job.idempotency_key:
            return None
        existing = await _one(conn, "owner_key = %s AND idempotency_key = %s", (job.owner, job.idempotency_key))
        if existing is not None and existing.request != job.request:
            raise InvalidArgument.field("idempotency_key", f"was used for job {existing.id} with a different request")
        return existing

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._db.transaction() as conn:
            return await _one(conn, "id = %s", (job_id,))

    async def claim_next(self, now: float) -> JobRecord | None:
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET state = %s, attempts = attempts + 1, started = %s, owner = %s,"
                f" lease_until = {_DB_NOW} + %s,"
                " seq_base = GREATEST(seq_base, (SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = jobs.id))"
                " WHERE id = (SELECT id FROM jobs WHERE state = %s AND id <> ALL(%s)"
                " ORDER BY priority DESC, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {COLUMNS}",
                (int(JobState.RUNNING), now, self.owner, self._lease_s, int(JobState.QUEUED), list(self._held)),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            job = record_of(row)
            await conn.execute("DELETE FROM events WHERE job_id = %s", (job.id,))
        self._held[job.id] = job.attempts
        return job

    async def append_event(self, job_id: str, attempt: int, seq: int, payload: bytes) -> None:
        async with self._db.transaction() as conn:
            # The job's row is locked (FOR SHARE) while the event goes in: no takeover can slip in between.
            cursor = await conn.execute(
                "WITH mine AS (SELECT id FROM jobs WHERE id = %s AND state = %s AND owner = %s AND attempts = %s"
                " FOR SHARE) INSERT INTO events (job_id, seq, attempt, payload) SELECT id, %s, %s, %s FROM mine",
                (job_id, int(JobState.RUNNING), self.owner, attempt, seq, attempt, payload),
            )
            if cursor.rowcount == 0:
                self._held.pop(job_id, None)
                raise LeaseLost(job_id)

    async def finish(self, job_id: str, outcome: Outcome, now: float) -> JobRecord | None:
        attempt = self._held.get(job_id)
        if attempt is None:
            return None
        try:  # held until the end is stored: a heartbeat meanwhile must not find the lease lost
            async with self._db.transaction() as conn:
                cursor = await conn.execute(
                    "UPDATE jobs SET state = %s, finished = %s, error_code = %s, error_message = %s, result = %s,"
                    " owner = NULL, lease_until = NULL"
                    f" WHERE id = %s AND state = %s AND owner = %s AND attempts = %s RETURNING {COLUMNS}",
                    (
                        *(int(outcome.state), now, outcome.error_code, outcome.error_message, outcome.result),
                        *(job_id, int(JobState.RUNNING), self.owner, attempt),
                    ),
                )
                row = await cursor.fetchone()
        finally:
            self._held.pop(job_id, None)
        return None if row is None else record_of(row)

    async def renew(self, job_ids: Collection[str]) -> Renewal:
        mine = [job_id for job_id in job_ids if job_id in self._held]
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                f"UPDATE jobs SET lease_until = {_DB_NOW} + %s FROM unnest(%s::text[], %s::int[]) AS mine (id, attempt)"
                " WHERE jobs.id = mine.id AND jobs.attempts = mine.attempt AND state = %s AND owner = %s"
                " RETURNING jobs.id, cancel_requested",
                (self._lease_s, mine, [self._held[j] for j in mine], int(JobState.RUNNING), self.owner),
            )
            rows = await cursor.fetchall()
        kept = {job_id for job_id, _ in rows}
        lost = frozenset(job_ids) - kept
        for job_id in lost:
            self._held.pop(job_id, None)
        return Renewal(lost=lost, cancel_requested=frozenset(job_id for job_id, flag in rows if flag))

    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE jobs SET state = %s, finished = %s, error_code = %s, error_message = %s"
                " WHERE id = %s AND state = %s",
                (int(JobState.CANCELLED), now, CANCELLED_CODE, "cancelled before it ran", job_id, int(JobState.QUEUED)),
            )
            await conn.execute(
                "UPDATE jobs SET cancel_requested = TRUE WHERE id = %s AND state = %s", (job_id, int(JobState.RUNNING))
            )
            return await _one(conn, "id = %s", (job_id,))

    async def requeue(self, job_id: str) -> None:
        attempt = self._held.get(job_id)
        if attempt is None:
            return
        try:
            async with self._db.transaction() as conn:
                await conn.execute(
                    "UPDATE jobs SET state = %s, attempts = attempts - 1, owner = NULL, lease_until = NULL"
                    " WHERE id = %s AND state = %s AND owner = %s AND attempts = %s",
                    (int(JobState.QUEUED), job_id, int(JobState.RUNNING), self.owner, attempt),
                )
        finally:
            self._held.pop(job_id, None)

    async def snapshot(self, job_id: str, after_seq: int, limit: int) -> tuple[JobRecord | None, list[JobEvent]]:
        async with self._db.transaction() as conn:
            job = await _one(conn, "id = %s", (job_id,))
            if job is None:
                return None, []
            cursor = await conn.execute(
                "SELECT seq, attempt, payload FROM events WHERE job_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (job_id, after_seq, limit),
            )
            return job, [JobEvent(seq, attempt, payload) for seq, attempt, payload in await cursor.fetchall()]

    async def list(
        self, state: JobState | None, before_seq: int | None, limit: int, owner: str | None = None
    ) -> list[JobRecord]:
        before = before_seq if before_seq is not None else 2**63 - 1
        value = None if state is None else int(state)
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE seq < %s AND (%s::smallint IS NULL OR state = %s::smallint)"
                " AND (%s::text IS NULL OR owner_key = %s::text) ORDER BY seq DESC LIMIT %s",
                (before, value, value, owner, owner, limit),
            )
            return [record_of(row) for row in await cursor.fetchall()]

    async def count_by_state(self) -> dict[JobState, int]:
        async with self._db.transaction() as conn:
            cursor = await conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            counts = {int(state): int(count) for state, count in await cursor.fetchall()}
        return {state: counts.get(int(state), 0) for state in JobState}

    async def recover(self, max_attempts: int, now: float) -> RecoveryReport:
        async with self._db.transaction() as conn:
            cursor = await conn.execute(_RECOVER, {"max": max_attempts, "now": now})
            verdicts = [JobState(state) for (state,) in await cursor.fetchall()]
            queued = await _scalar(conn, "SELECT COUNT(*) FROM jobs WHERE state = %s", (int(JobState.QUEUED),))
        return RecoveryReport(
            requeued=verdicts.count(JobState.QUEUED),
            failed=verdicts.count(JobState.FAILED),
            cancelled=verdicts.count(JobState.CANCELLED),
            queued=queued,
        )

    async def purge(self, finished_before: float) -> int:
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                "DELETE FROM jobs WHERE finished < %s AND state = ANY(%s)", (finished_before, _FINAL)
            )
            return cursor.rowcount

    async def follow(self, listener: Listener) -> None:
        """LISTEN on a connection of its own; after a lost connection, reconnect and report the queue."""
        handlers: dict[str, Callable[[str], None]] = {
            CHANNEL_JOB: listener.changed,
            CHANNEL_CANCEL: listener.cancel_requested,
            CHANNEL_QUEUED: lambda _: listener.queued(),
        }
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    for channel in handlers:
                        await conn.execute(f"LISTEN {channel}")
                    listener.queued()  # what was queued while nobody listened
                    async for note in conn.notifies():
                        handlers[note.channel](note.payload)
            except psycopg.OperationalError as error:
                log.warning("job notifications lost; reconnecting", extra={"error": str(error)})
                await asyncio.sleep(RECONNECT_S)


async def _scalar(conn: Conn, sql: str, params: tuple[object, ...]) -> int:
    cursor = await conn.execute(sql, params)
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _one(conn: Conn, where: str, params: tuple[object, ...]) -> JobRecord | None:
    cursor = await conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE {where}", params)
    row = await cursor.fetchone()
    return None if row is None else record_of(row)
