"""Job owners in both job stores (SQLite, and a real Postgres): the owner and allowed tools a job records, listings
filtered by owner in the query (pages stay full), idempotency keys per owner, and the migration of a database made
before jobs had owners."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from gateway.jobs.model import JobState, NewJob
from gateway.jobs.postgres_store import PostgresJobStore
from gateway.jobs.sqlite_store import SqliteJobStore
from gateway.jobs.store import JobStore
from genmesh.errors import InvalidArgument

NOW = 1_800_000_000.0
A, B = "apiKeys/a", "apiKeys/b"

#: The job tables as the stores made them before jobs had owners (idempotency keys unique over all jobs).
OLD_SQLITE = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, idempotency_key TEXT UNIQUE,
    state INTEGER NOT NULL, priority INTEGER NOT NULL, request BLOB NOT NULL, created REAL NOT NULL, started REAL,
    finished REAL, attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
    error_code INTEGER NOT NULL DEFAULT 0, error_message TEXT NOT NULL DEFAULT '', result BLOB NOT NULL DEFAULT x'',
    seq_base INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_queue ON jobs (state, priority DESC, seq);
CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, seq INTEGER NOT NULL, attempt INTEGER NOT NULL,
    payload BLOB NOT NULL, PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""
OLD_POSTGRES = """
CREATE TABLE jobs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE, idempotency_key TEXT UNIQUE,
    state SMALLINT NOT NULL, priority INTEGER NOT NULL, request BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION, finished DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE, error_code INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '', result BYTEA NOT NULL DEFAULT '', seq_base BIGINT NOT NULL DEFAULT 0,
    owner TEXT, lease_until DOUBLE PRECISION
);
CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, seq BIGINT NOT NULL, attempt INTEGER NOT NULL,
    payload BYTEA NOT NULL, PRIMARY KEY (job_id, seq)
);
"""
#: An old job (with an idempotency key and two events) and a newer one, since purged; ``{r}``, ``{e1}`` and
#: ``{e2}`` are the bytes b"r", b"e1", b"e2" as each database spells them.
OLD_ROWS = [
    "INSERT INTO jobs (id, idempotency_key, state, priority, request, created) VALUES ('job-old', 'k', 1, 0, {r}, 1)",
    "INSERT INTO events (job_id, seq, attempt, payload) VALUES ('job-old', 1, 1, {e1}), ('job-old', 2, 1, {e2})",
    "INSERT INTO jobs (id, state, priority, request, created) VALUES ('job-purged', 3, 0, {r}, 2)",
    "DELETE FROM jobs WHERE id = 'job-purged'",
]
SQLITE_BYTES = {"r": "x'72'", "e1": "x'6531'", "e2": "x'6532'"}
POSTGRES_BYTES = {name: f"'\\x{value[2:-1]}'::bytea" for name, value in SQLITE_BYTES.items()}


def _job(n: int, owner: str = "", key: str = "", request: bytes = b"", tools: frozenset[str] = frozenset()) -> NewJob:
    return NewJob(f"job-{n}", request or f"request {n}".encode(), key, 0, NOW + n, owner, tools)


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    opened: JobStore
    if request.param == "sqlite":
        opened = SqliteJobStore(tmp_path / "jobs.db")
    else:
        opened = PostgresJobStore(request.getfixturevalue("postgres_url"), 30.0)
    await opened.open()
    yield opened
    await opened.close()


async def test_a_job_keeps_its_owner_and_the_tools_it_may_call(store: JobStore) -> None:
    submitted, _ = await store.submit(_job(1, A, tools=frozenset({"calculator", "docs__search"})), 10)
    await store.submit(_job(2), 10)
    claimed = await store.claim_next(NOW)
    assert claimed is not None and claimed.id == "job-1"
    for job in (submitted, await store.get("job-1"), claimed):
        assert job is not None and job.owner == A and job.allowed_tools == {"calculator", "docs__search"}
    opened = await store.get("job-2")
    assert opened is not None and opened.owner == "" and opened.allowed_tools == frozenset()


async def test_a_listing_of_one_owner_pages_through_its_jobs_only(store: JobStore) -> None:
    for n in range(1, 13):  # a, b, b, a, b, b, ...: most jobs are another owner's
        await store.submit(_job(n, A if n % 3 == 1 else B), 10 + n)
    seen: list[str] = []
    before = None
    while page := await store.list(None, before, 2, owner=A):
        assert len(page) == 2 or len(seen) == 2, "pages are filled from the owner's jobs, not cut by a filter"
        seen += [job.id for job in page]
        before = page[-1].seq
    assert seen == ["job-10", "job-7", "job-4", "job-1"]
    assert len(await store.list(None, None, 100)) == 12, "without an owner: every job"
    claimed = await store.claim_next(NOW)  # job-1, the oldest
    assert claimed is not None
    assert [j.id for j in await store.list(JobState.RUNNING, None, 10, owner=A)] == ["job-1"]
    assert await store.list(JobState.RUNNING, None, 10, owner=B) == []


async def test_idempotency_keys_are_scoped_per_owner(store: JobStore) -> None:
    a, created_a = await store.submit(_job(1, A, key="k"), 10)
    b, created_b = await store.submit(_job(2, B, key="k"), 10)
    opened, created_open = await store.submit(_job(3, "", key="k"), 10)
    assert created_a and created_b and created_open and len({a.id, b.id, opened.id}) == 3
    again, created_again = await store.submit(_job(4, A, key="k", request=b"request 1"), 10)
    assert again.id == a.id and not created_again
    with pytest.raises(InvalidArgument) as caught:
        await store.submit(_job(5, B, key="k", request=b"request 1"), 10)  # B's key names B's job
    assert caught.value.violations[0].field == "idempotency_key" and "job-2" in caught.value.violations[0].description


async def _check_migrated(store: JobStore) -> None:
    old = await store.get("job-old")
    assert old is not None and old.owner == "" and old.allowed_tools == frozenset() and old.idempotency_key == "k"
    _, events = await store.snapshot("job-old", 0, 10)
    assert [e.payload for e in events] == [b"e1", b"e2"], "events survive the migration"
    again, created = await store.submit(_job(10, "", key="k", request=b"r"), 10)
    assert again.id == "job-old" and not created, "the open gateway's keys still name its jobs"
    mine, created = await store.submit(_job(11, A, key="k"), 10)
    assert created and mine.owner == A and mine.seq > 2, "a key per owner; sequence numbers never go back"
    assert [j.id for j in await store.list(None, None, 10, owner=A)] == ["job-11"]


async def test_a_sqlite_file_made_before_owners_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SQLITE)
        for statement in OLD_ROWS:
            db.execute(statement.format(**SQLITE_BYTES))
    store = SqliteJobStore(path)
    await store.open()
    try:
        await _check_migrated(store)
    finally:
        await store.close()
    store = SqliteJobStore(path)  # opened again: nothing left to migrate, nothing lost
    await store.open()
    try:
        assert [j.id for j in await store.list(None, None, 10)] == ["job-11", "job-old"]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"jobs", "events", "sqlite_sequence"}


async def test_a_postgres_database_made_before_owners_is_migrated(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(OLD_POSTGRES)
        for statement in OLD_ROWS:
            conn.execute(statement.format(**POSTGRES_BYTES).encode())
    # Two gateways upgraded at once: the schema lock has them migrate in turn.
    stores = PostgresJobStore(postgres_url, 30.0), PostgresJobStore(postgres_url, 30.0)
    await asyncio.gather(*(store.open() for store in stores))
    try:
        await _check_migrated(stores[0])
        b, created = await stores[1].submit(_job(12, B, key="k"), 10)
        assert created and b.owner == B
    finally:
        await asyncio.gather(*(store.close() for store in stores))
