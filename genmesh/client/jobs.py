"""The job API of a client (JobService): submit, get, watch, cancel and list, with typed jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, Unpack, cast

import grpc

from genmesh.client.errors import client_error
from genmesh.client.events import (
    Answer,
    Event,
    ToolCall,
    complete,
    enum_name,
    event_of,
    passage,
    step_end,
    tool_result,
)
from genmesh.client.requests import Message, MessageDict, RequestOptions, gateway_request
from genmesh.client.retry import deadline_of, left_s
from genmesh.errors import GenmeshError
from genmesh.messages import message_text
from genmesh.status import error_from_status
from genmesh.tool_messages import openai_message
from genmesh.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc

Reply = TypeVar("Reply")

FINAL_STATES = ("succeeded", "failed", "cancelled")


class Unary(Protocol):
    """AsyncClient._unary: a unary call within its deadline, retried per the client's policy."""

    def __call__(
        self, method: Callable[..., Awaitable[Reply]], request: Any, timeout_s: float | None, idempotent: bool
    ) -> Awaitable[Reply]: ...


@dataclass(frozen=True, slots=True)
class Job:
    """A job: ``state`` is ``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``; a succeeded job has
    its ``answer``, a failed one its ``error``. ``proto`` is the Job as the gateway sent it."""

    id: str
    state: str
    priority: int
    attempts: int
    idempotency_key: str
    answer: Answer | None
    error: GenmeshError | None
    proto: jobs_pb2.Job

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One message of WatchJob: an event of ``attempt`` at ``sequence`` (resume after it), or, last, the ``job`` in
    its final state."""

    sequence: int
    attempt: int
    event: Event | None
    job: Job | None


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job]
    next_page_token: str


def job_of(proto: jobs_pb2.Job) -> Job:
    state = enum_name(jobs_pb2.JobState, proto.state, "JOB_STATE_")
    answer = None
    if proto.HasField("result") and proto.result.HasField("completion"):
        result = proto.result
        done = complete(result.completion)
        tools = [tool_result(t) for t in result.tool_results]
        sources = [passage(p) for p in result.sources]
        turns = [m for m in result.output_messages if m.role == common_pb2.ROLE_ASSISTANT]
        answer = Answer(
            result.answer,
            sources,
            tools,
            done.degraded,
            done.finish_reason,
            done.usage,
            done.timings,
            tool_calls=_tool_calls(result),
            steps=[step_end(s) for s in result.steps],
            last_step_text=message_text(turns[-1]) if turns else result.answer,
            output_messages=[cast(MessageDict, openai_message(m)) for m in result.output_messages],
        )
    error = None
    if proto.HasField("error"):
        error = error_from_status(proto.error.status, proto.error.status.message or "the job failed")
    return Job(proto.id, state, proto.priority, proto.attempts, proto.idempotency_key, answer, error, proto)


def _tool_calls(result: jobs_pb2.JobResult) -> list[ToolCall]:
    """The calls of the result's assistant turns (the i-th turn is step i + 1's): executor ``gateway`` for a call a
    tool message answers, else ``client``."""
    answered = {m.tool_call_id for m in result.output_messages if m.role == common_pb2.ROLE_TOOL}
    turns = [m for m in result.output_messages if m.role == common_pb2.ROLE_ASSISTANT]
    steps = [s.step for s in result.steps]
    return [
        ToolCall(
            steps[i] if i < len(steps) else i + 1,
            call.call_id,
            call.name,
            call.arguments_json,
            "gateway" if call.call_id in answered else "client",
        )
        for i, turn in enumerate(turns)
        for call in turn.tool_calls
    ]


class AsyncJobs:
    """``client.jobs``: JobService calls. Every call takes ``timeout_s`` (seconds; None: the client's)."""

    def __init__(self, stub: jobs_pb2_grpc.JobServiceStub, unary: Unary) -> None:
        self._stub = stub
        self._unary = unary

    async def submit(
        self,
        question: str = "",
        messages: Sequence[Message] = (),
        *,
        idempotency_key: str = "",
        priority: int = 0,
        timeout_s: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> Job:
        """Queue a generation (``options`` as AsyncClient.generate's); it is committed when this returns. Retried
        on UNAVAILABLE only with an ``idempotency_key`` (which makes a repeat return the same job)."""
        request = jobs_pb2.SubmitJobRequest(
            request=gateway_request(question, messages, **options), idempotency_key=idempotency_key, priority=priority
        )
        reply = await self._unary(self._stub.SubmitJob, request, timeout_s, bool(idempotency_key))
        return job_of(reply.job)

    async def get(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        reply = await self._unary(self._stub.GetJob, jobs_pb2.GetJobRequest(id=job_id), timeout_s, True)
        return job_of(reply.job)

    async def cancel(self, job_id: str, *, timeout_s: float | None = None) -> Job:
        """Cancel a queued or running job; a finished job is returned as it is."""
        reply = await self._unary(self._stub.CancelJob, jobs_pb2.CancelJobRequest(id=job_id), timeout_s, True)
        return job_of(reply.job)

    async def list(
        self,
        *,
        state: str = "",
        page_size: int = 0,
        page_token: str = "",
        full: bool = False,
        timeout_s: float | None = None,
    ) -> JobPage:
        """A page of the caller's jobs, newest first; ``state`` (``queued``...) filters; ``full`` includes results."""
        request = jobs_pb2.ListJobsRequest(
            state=jobs_pb2.JobState.Value(f"JOB_STATE_{state.upper()}") if state else jobs_pb2.JOB_STATE_UNSPECIFIED,
            page_size=page_size,
            page_token=page_token,
            view=jobs_pb2.JOB_VIEW_FULL if full else jobs_pb2.JOB_VIEW_BASIC,
        )
        reply = await self._unary(self._stub.ListJobs, request, timeout_s, True)
        return JobPage([job_of(j) for j in reply.jobs], reply.next_page_token)

    async def watch(
        self, job_id: str, *, after_sequence: int = 0, timeout_s: float | None = None
    ) -> AsyncIterator[JobUpdate]:
        """The job's events from ``after_sequence`` on, then the job in its final state (the stream ends). Not
        retried: resume a broken watch with the last sequence seen. ``timeout_s`` None means no deadline here."""
        request = jobs_pb2.WatchJobRequest(id=job_id, after_sequence=after_sequence)
        call = self._stub.WatchJob(request, timeout=left_s(deadline_of(timeout_s)))
        try:
            async for reply in call:
                kind = reply.WhichOneof("payload")
                event = event_of(reply.event) if kind == "event" else None
                job = job_of(reply.job) if kind == "job" else None
                yield JobUpdate(reply.sequence, reply.attempt, event, job)
        except grpc.aio.AioRpcError as error:
            raise client_error(error) from None
        finally:
            call.cancel()
