"""Picks the job store that ``--jobs-db`` names."""

from __future__ import annotations

from pathlib import Path

from gateway.jobs.config import JobConfig
from gateway.jobs.postgres_store import PostgresJobStore
from gateway.jobs.sqlite_store import SqliteJobStore
from gateway.jobs.store import JobStore


def make_store(config: JobConfig) -> JobStore:
    """Postgres for a ``postgresql://`` URL (leases of ``--job-lease``), else the SQLite file."""
    if config.postgres:
        return PostgresJobStore(config.db, config.lease_s)
    return SqliteJobStore(Path(config.db))
