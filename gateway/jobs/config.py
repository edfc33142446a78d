"""Settings of the gateway's background jobs, and the flags that set them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from genmesh.config import Flags

DEFAULT_JOBS_DB = ".genmesh/data/gateway/jobs.db"


@dataclass(frozen=True, slots=True)
class JobConfig:
    """Where jobs are stored and how they run."""

    db_path: Path
    workers: int = 8
    queue_max: int = 1000
    retention_s: float = 7 * 24 * 3600.0
    max_attempts: int = 3
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JobConfig:
        """The settings the flags of ``add_job_flags`` gave."""
        return cls(
            db_path=Path(args.jobs_db),
            workers=args.job_workers,
            queue_max=args.job_queue_max,
            retention_s=args.job_retention,
            max_attempts=args.job_max_attempts,
            timeout_s=args.job_timeout,
        )


def add_job_flags(flags: Flags) -> None:
    """The gateway's job flags (environment fallbacks GENMESH_GATEWAY_JOBS_DB, ...)."""
    defaults = JobConfig(Path(DEFAULT_JOBS_DB))
    flags.add("--jobs-db", default=DEFAULT_JOBS_DB, help="SQLite file of the job queue (one gateway per file)")
    flags.add("--job-workers", type=int, default=defaults.workers, help="jobs run at once")
    flags.add("--job-queue-max", type=int, default=defaults.queue_max, help="queued jobs before SubmitJob refuses")
    flags.add("--job-retention", type=float, default=defaults.retention_s, help="seconds a finished job is kept")
    flags.add(
        "--job-max-attempts", type=int, default=defaults.max_attempts, help="runs of a job interrupted by crashes"
    )
    flags.add("--job-timeout", type=float, default=defaults.timeout_s, help="seconds one run of a job may take")
