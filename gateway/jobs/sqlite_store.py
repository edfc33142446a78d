"""The JobStore of one gateway: one SQLite file in WAL mode, the embedded default.

Every SQLite call runs on one dedicated thread that owns the only connection: the event loop never
blocks on the disk, and there is a single writer, so each method is one atomic transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.jobs.model import JobEvent, JobRecord, JobState, NewJob, Outcome, RecoveryReport
from gateway.jobs.store import (
    ABORTED_CODE,
    CANCELLED_CODE,
    COLUMNS,
    Listener,
    QueueFull,
    Renewal,
    record_of,
    tools_column,
)
from genmesh.errors import FailedPrecondition, InvalidArgument

T = TypeVar("T")

_JOBS = """
CREATE TABLE IF NOT EXISTS {table} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    request BLOB NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error_code INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '',
    result BLOB NOT NULL DEFAULT x'',
    seq_base INTEGER NOT NULL DEFAULT 0,
    owner_key TEXT NOT NULL DEFAULT '',
    allowed_tools TEXT NOT NULL DEFAULT '[]',
    traceparent TEXT NOT NULL DEFAULT '',
    UNIQUE (owner_key, idempotency_key)
)
"""
#: The columns of a job table made before jobs had owners (their rows are the open gateway's: owner '').
_OLD_COLUMNS = (
    "seq, id, idempotency_key, state, priority, request, created, started, finished, attempts, cancel_requested,"
    " error_code, error_message, result, seq_base"
)
_SCHEMA = """
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner_key, seq);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (state, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished) WHERE finished IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""

_FINAL = tuple(int(s) for s in JobState if s.final)


class SqliteJobStore:
    """JobStore on one SQLite file in WAL mode; ``synchronous=NORMAL``: a commit survives a killed process."""

    #: The file belongs to one gateway: ``recover`` at start takes back every job it left running.
    shared = False

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._db is None:
                raise FailedPrecondition("the job store is not open")
            with self._db:  # one transaction: commit on success, roll back on error
                return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def open(self) -> None:
        def connect() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(_JOBS.format(table="jobs"))
            _add_owners(db)
            _add_traceparent(db)
            db.executescript(_SCHEMA)
            db.isolation_level = "DEFERRED"
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        def disconnect() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, disconnect)
        self._executor.shutdown(wait=True)

    async def submit(self, job: NewJob, queue_max: int) -> tuple[JobRecord, bool]:
        def run(db: sqlite3.Connection) -> tuple[JobRecord, bool]:
            if job.idempotency_key:
                existing = _one(db, "owner_key = ? AND idempotency_key = ?", (job.owner, job.idempotency_key))
                if existing is not None:
                    if existing.request != job.request:
                        raise InvalidArgument.field(
                            "idempotency_key", f"was used for job {existing.id} with a different request"
                        )
                    return existing, False
            (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (int(JobState.QUEUED),)).fetchone()
            if queued >= queue_max:
                raise QueueFull(int(queued))
            db.execute(
                "INSERT INTO jobs (id, idempotency_key, state, priority, request, created, owner_key, allowed_tools,"
                " traceparent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *(job.id, job.idempotency_key or None, int(JobState.QUEUED), job.priority, job.request),
                    *(job.created, job.owner, tools_column(job.allowed_tools), job.traceparent),
                ),
            )
            record = _one(db, "id = ?", (job.id,))
            assert record is not None
            return record, True

        return await self._call(run)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._call(lambda db: _one(db, "id = ?", (job_id,)))

    async def claim_next(self, now: float) -> JobRecord | None:
        def run(db: sqlite3.Connection) -> JobRecord | None:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? ORDER BY priority DESC, seq LIMIT 1", (int(JobState.QUEUED),)
            ).fetchone()
            if row is None:
                return None
            (job_id,) = row
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)).fetchone()
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, started = ?, seq_base = MAX(seq_base, ?)"
                " WHERE id = ?",
                (int(JobState.RUNNING), now, last, job_id),
            )
            return _one(db, "id = ?", (job_id,))

        return await self._call(run)

    async def append_event(self, job_id: str, attempt: int, seq: int, payload: bytes) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO events (job_id, seq, attempt, payload) VALUES (?, ?, ?, ?)",
                (job_id, seq, attempt, payload),
            )

        await self._call(run)

    async def finish(self, job_id: str, outcome: Outcome, now: float) -> JobRecord | None:
        def run(db: sqlite3.Connection) -> JobRecord | None:
            changed = db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error_code = ?, error_message = ?, result = ?"
                " WHERE id = ? AND state = ?",
                (
                    int(outcome.state),
                    now,
                    outcome.error_code,
                    outcome.error_message,
                    outcome.result,
                    job_id,
                    int(JobState.RUNNING),
                ),
            ).rowcount
            return _one(db, "id = ?", (job_id,)) if changed else None

        return await self._call(run)

    async def renew(self, job_ids: Collection[str]) -> Renewal:
        ids = list(job_ids)

        def run(db: sqlite3.Connection) -> Renewal:
            marks = ", ".join("?" * len(ids))
            rows = db.execute(
                f"SELECT id, cancel_requested FROM jobs WHERE state = ? AND id IN ({marks})",
                (int(JobState.RUNNING), *ids),
            ).fetchall()
            running = {job_id for job_id, _ in rows}
            return Renewal(
                lost=frozenset(ids) - running, cancel_requested=frozenset(job_id for job_id, flag in rows if flag)
            )

        return await self._call(run)

    async def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        def run(db: sqlite3.Connection) -> JobRecord | None:
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error_code = ?, error_message = ? WHERE id = ? AND state = ?",
                (int(JobState.CANCELLED), now, CANCELLED_CODE, "cancelled before it ran", job_id, int(JobState.QUEUED)),
            )
            db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = ?", (job_id, int(JobState.RUNNING))
            )
            return _one(db, "id = ?", (job_id,))

        return await self._call(run)

    async def requeue(self, job_id: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts - 1 WHERE id = ? AND state = ?",
                (int(JobState.QUEUED), job_id, int(JobState.RUNNING)),
            )

        await self._call(run)

    async def snapshot(self, job_id: str, after_seq: int, limit: int) -> tuple[JobRecord | None, list[JobEvent]]:
        def run(db: sqlite3.Connection) -> tuple[JobRecord | None, list[JobEvent]]:
            job = _one(db, "id = ?", (job_id,))
            if job is None:
                return None, []
            rows = db.execute(
                "SELECT seq, attempt, payload FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after_seq, limit),
            ).fetchall()
            return job, [JobEvent(seq, attempt, payload) for seq, attempt, payload in rows]

        return await self._call(run)

    async def list(
        self, state: JobState | None, before_seq: int | None, limit: int, owner: str | None = None
    ) -> list[JobRecord]:
        where, params = ["seq < ?"], list[int | str]([before_seq if before_seq is not None else 2**63 - 1])
        if state is not None:
            where.append("state = ?")
            params.append(int(state))
        if owner is not None:
            where.append("owner_key = ?")
            params.append(owner)

        def run(db: sqlite3.Connection) -> list[JobRecord]:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?", (*params, limit)
            ).fetchall()
            return [record_of(row) for row in rows]

        return await self._call(run)

    async def count_by_state(self) -> dict[JobState, int]:
        def run(db: sqlite3.Connection) -> dict[JobState, int]:
            counts = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            return {state: int(counts.get(int(state), 0)) for state in JobState}

        return await self._call(run)

    async def recover(self, max_attempts: int, now: float) -> RecoveryReport:
        def run(db: sqlite3.Connection) -> RecoveryReport:
            running = int(JobState.RUNNING)
            cancelled = db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error_code = ?,"
                " error_message = 'cancelled; the gateway stopped while the cancel was under way'"
                " WHERE state = ? AND cancel_requested = 1",
                (int(JobState.CANCELLED), now, CANCELLED_CODE, running),
            ).rowcount
            failed = db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error_code = ?, error_message = 'gave up: the gateway"
                " stopped during attempt ' || attempts || ', the last of ' || ? || ' (--job-max-attempts)'"
                " WHERE state = ? AND attempts >= ?",
                (int(JobState.FAILED), now, ABORTED_CODE, max_attempts, running, max_attempts),
            ).rowcount
            requeued = db.execute("UPDATE jobs SET state = ? WHERE state = ?", (int(JobState.QUEUED), running)).rowcount
            (queued,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (int(JobState.QUEUED),)).fetchone()
            return RecoveryReport(requeued=requeued, failed=failed, cancelled=cancelled, queued=int(queued))

        return await self._call(run)

    async def purge(self, finished_before: float) -> int:
        def run(db: sqlite3.Connection) -> int:
            marks = ", ".join("?" * len(_FINAL))
            return int(
                db.execute(
                    f"DELETE FROM jobs WHERE finished < ? AND state IN ({marks})", (finished_before, *_FINAL)
                ).rowcount
            )

        return await self._call(run)

    async def follow(self, listener: Listener) -> None:
        """No other gateway writes this file: nothing to follow."""


def _add_owners(db: sqlite3.Connection) -> None:
    """Migrate a job table made before jobs had owners: add the owner and allowed-tools columns, and scope
    idempotency keys per owner. SQLite cannot drop a UNIQUE constraint, so the table is rebuilt in one
    transaction (the procedure of sqlite.org/lang_altertable.html; foreign keys off so events stay)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if "owner_key" in columns:
        return
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            (high,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
            db.execute(_JOBS.format(table="jobs_with_owners"))
            db.execute(f"INSERT INTO jobs_with_owners ({_OLD_COLUMNS}) SELECT {_OLD_COLUMNS} FROM jobs")
            db.execute("DROP TABLE jobs")
            db.execute("ALTER TABLE jobs_with_owners RENAME TO jobs")
            db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'jobs'", (high,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.execute("PRAGMA foreign_keys=ON")


def _add_traceparent(db: sqlite3.Connection) -> None:
    """Migrate a job table made before jobs kept the trace context of their submission (theirs is "")."""
    if "traceparent" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''")


def _one(db: sqlite3.Connection, where: str, params: tuple[object, ...]) -> JobRecord | None:
    row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE {where}", params).fetchone()
    return None if row is None else record_of(row)
