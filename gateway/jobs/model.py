"""The job domain: states, the stored job, its events; no protobuf or grpc here."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobState(enum.IntEnum):
    """A job's state; the numbers are those of genmesh.v1.JobState."""

    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def final(self) -> bool:
        """Whether the job will never change again."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job as SubmitJob accepts it; ``request`` is the serialized GatewayRequest."""

    id: str
    request: bytes
    idempotency_key: str
    priority: int
    created: float
    #: The API key that submitted it ("apiKeys/{id}"); "" on a gateway without keys.
    owner: str = ""
    #: The tools its run may call (the key's at submission); empty: every tool.
    allowed_tools: frozenset[str] = frozenset()
    #: The W3C traceparent of the span that submitted it, which its runs continue; "" when not traced.
    traceparent: str = ""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A stored job. Times are seconds since the epoch; ``result`` is a serialized JobResult."""

    seq: int
    id: str
    state: JobState
    priority: int
    idempotency_key: str
    request: bytes
    created: float
    started: float | None
    finished: float | None
    attempts: int
    cancel_requested: bool
    error_code: int
    error_message: str
    result: bytes
    #: The sequence number the next attempt's first event follows (sequence numbers never go back).
    seq_base: int
    #: The API key that submitted it; "" on a gateway without keys.
    owner: str = ""
    #: The tools its run may call (the key's at submission); empty: every tool.
    allowed_tools: frozenset[str] = frozenset()
    #: The W3C traceparent of the span that submitted it, which its runs continue; "" when not traced.
    traceparent: str = ""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One stored event of a job's run; ``payload`` is a serialized GatewayEvent."""

    seq: int
    attempt: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: its final state, the error (code 0 when none) and the serialized JobResult."""

    state: JobState
    error_code: int = 0
    error_message: str = ""
    result: bytes = b""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What start-up recovery did with the jobs a dead gateway left behind."""

    requeued: int
    failed: int
    cancelled: int
    queued: int
