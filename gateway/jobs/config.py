"""Settings of the gateway's background jobs, and the flags that set them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from urllib.parse import urlsplit

from genmesh.config import Flags

DEFAULT_JOBS_DB = ".genmesh/data/gateway/jobs.db"
#: ``--jobs-db`` values of these schemes name a Postgres database; anything else is a SQLite file.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Where jobs are stored and how they run."""

    #: A SQLite file (one gateway) or a ``postgresql://`` URL (any number of gateways).
    db: str
    workers: int = 8
    queue_max: int = 1000
    retention_s: float = 7 * 24 * 3600.0
    max_attempts: int = 3
    timeout_s: float = 600.0
    #: How long a job stays leased to a gateway that stopped renewing it (Postgres); renewed every third.
    lease_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.db:
            raise ValueError("--jobs-db must not be empty")
        if self.workers < 1:
            raise ValueError("--job-workers must be at least 1")
        if self.queue_max < 1:
            raise ValueError("--job-queue-max must be at least 1")
        if self.retention_s <= 0:
            raise ValueError("--job-retention must be positive")
        if self.max_attempts < 1:
            raise ValueError("--job-max-attempts must be at least 1")
        if self.timeout_s <= 0:
            raise ValueError("--job-timeout must be positive")
        if self.lease_s <= 0:
            raise ValueError("--job-lease must be positive")

    @property
    def postgres(self) -> bool:
        """Whether ``db`` is a Postgres URL."""
        return self.db.startswith(POSTGRES_SCHEMES)

    @property
    def db_label(self) -> str:
        """``db`` fit for a log line: a URL without its password."""
        if not self.postgres:
            return self.db
        url = urlsplit(self.db)
        if url.password is None:
            return self.db
        return url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1)).geturl()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JobConfig:
        """The settings the flags of ``add_job_flags`` gave."""
        return cls(
            db=args.jobs_db,
            workers=args.job_workers,
            queue_max=args.job_queue_max,
            retention_s=args.job_retention,
            max_attempts=args.job_max_attempts,
            timeout_s=args.job_timeout,
            lease_s=args.job_lease,
        )


def add_job_flags(flags: Flags) -> None:
    """The gateway's job flags (environment fallbacks GENMESH_GATEWAY_JOBS_DB, ...)."""
    defaults = JobConfig(DEFAULT_JOBS_DB)
    flags.add(
        "--jobs-db",
        default=DEFAULT_JOBS_DB,
        help="the job queue: a SQLite file (one gateway per file) or a postgresql:// URL (shared by gateways)",
    )
    flags.add("--job-workers", type=int, default=defaults.workers, help="jobs run at once")
    flags.add("--job-queue-max", type=int, default=defaults.queue_max, help="queued jobs before SubmitJob refuses")
    flags.add("--job-retention", type=float, default=defaults.retention_s, help="seconds a finished job is kept")
    flags.add(
        "--job-max-attempts", type=int, default=defaults.max_attempts, help="runs of a job interrupted by crashes"
    )
    flags.add("--job-timeout", type=float, default=defaults.timeout_s, help="seconds one run of a job may take")
    flags.add(
        "--job-lease",
        type=float,
        default=defaults.lease_s,
        help="seconds before another gateway takes over the jobs of one that stopped renewing them (Postgres)",
    )
