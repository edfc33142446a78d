"""JobService: protobuf in, the job runtime's records out as protobuf; checks every field at the edge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from gateway.auth.caller import current_caller
from gateway.auth.limits import KeyLimiter
from gateway.jobs.model import JobRecord, JobState
from gateway.jobs.runtime import JobRuntime
from gateway.metrics import GatewayMetrics, counting_refusals
from gateway.request import plan_request
from genmesh.errors import InvalidArgument
from genmesh.paging import check_page_size, decode_page_token, encode_page_token, fitting
from genmesh.status import code_of_value, status_message
from genmesh.v1 import gateway_pb2, jobs_pb2, jobs_pb2_grpc

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
MAX_IDEMPOTENCY_KEY = 256
MAX_PRIORITY = 1000
DEFAULT_PAGE_SIZE = 50


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """The JobService RPCs over a JobRuntime."""

    def __init__(self, runtime: JobRuntime, key_limits: KeyLimiter | None = None) -> None:
        self._runtime = runtime
        self._key_limits = key_limits if key_limits is not None else KeyLimiter()
        self.metrics: GatewayMetrics | None = None
        """Where refused submissions are counted (set when the gateway serves metrics)."""

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobResponse:
        try:
            plan = plan_request(request.request, None)
        except InvalidArgument as error:
            raise error.prefixed("request") from None
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument.field("idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY} characters")
        if abs(request.priority) > MAX_PRIORITY:
            raise InvalidArgument.field("priority", f"must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
        # A valid SubmitJob costs one request of its key and reserves its max_tokens times n (charged in full even if
        # the run stops earlier: it may run on another gateway, which charges nothing; docs/SECURITY.md).
        caller = current_caller()
        body = request.request.SerializeToString(deterministic=True)
        owner, tools = (caller.key_name, caller.allowed_tools) if caller else ("", frozenset[str]())
        with counting_refusals(self.metrics):  # the key's limits, then a full queue
            self._key_limits.admit_request(caller, reserve_tokens=plan.sampling.max_tokens * plan.sampling.n)
            record = await self._runtime.submit(body, request.idempotency_key, request.priority, owner, tools)
        return jobs_pb2.SubmitJobResponse(job=to_proto(record))

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=to_proto(await self._runtime.get(_job_id(request.id), _visible_owner())))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        job_id = _job_id(request.id)
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        async for item in self._runtime.watch(job_id, request.after_sequence, _visible_owner()):
            if isinstance(item, JobRecord):
                yield jobs_pb2.WatchJobResponse(attempt=item.attempts, job=to_proto(item))
            else:
                event = gateway_pb2.GatewayEvent.FromString(item.payload)
                yield jobs_pb2.WatchJobResponse(sequence=item.seq, attempt=item.attempt, event=event)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        job = await self._runtime.cancel(_job_id(request.id), _visible_owner())
        return jobs_pb2.CancelJobResponse(job=to_proto(job))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        check_page_size(request.page_size)
        if request.state not in jobs_pb2.JobState.values():
            raise InvalidArgument.field("state", f"unknown job state {request.state}")
        if request.view not in jobs_pb2.JobView.values():
            raise InvalidArgument.field("view", f"unknown job view {request.view}")
        state = JobState(request.state) if request.state else None
        before = decode_jobs_token(request.page_token, request.state) if request.page_token else None
        size = request.page_size or DEFAULT_PAGE_SIZE
        records = await self._runtime.list(state, before, size + 1, _visible_owner())
        jobs = [to_proto(r, full=request.view == jobs_pb2.JOB_VIEW_FULL) for r in records[:size]]
        count = fitting(jobs)
        response = jobs_pb2.ListJobsResponse(jobs=jobs[:count])
        if len(records) > count:
            response.next_page_token = encode_jobs_token(records[count - 1].seq, request.state)
        return response


def _visible_owner() -> str | None:
    """Whose jobs the caller may see: its key's own; everyone's (None) for an admin key or on an open gateway."""
    caller = current_caller()
    return None if caller is None or caller.admin else caller.key_name


def _job_id(value: str) -> str:
    if not value:
        raise InvalidArgument.field("id", "must not be empty")
    return value


def encode_jobs_token(last_seq: int, state: int) -> str:
    """An opaque cursor: the page continues after the job numbered ``last_seq`` of the same state filter."""
    return encode_page_token("jobs", state, last_seq)


def decode_jobs_token(token: str, state: int) -> int:
    """The cursor's job number; InvalidArgument naming page_token when it is not one of ours for ``state``."""
    token_state, seq = decode_page_token(token, "jobs", 2)
    if not seq.isdigit() or int(seq) < 1 or not token_state.isdigit():
        raise InvalidArgument.field("page_token", "is not a token ListJobs returned")
    if int(token_state) != state:
        raise InvalidArgument.field("page_token", "was returned for a different state filter")
    return int(seq)


def to_proto(record: JobRecord, full: bool = True) -> jobs_pb2.Job:
    """The Job message of a stored job: the FULL view, or the BASIC one (no request, no result)."""
    job = jobs_pb2.Job(
        id=record.id,
        state=jobs_pb2.JobState.ValueType(int(record.state)),
        priority=record.priority,
        idempotency_key=record.idempotency_key,
        attempts=record.attempts,
        owner=record.owner,
    )
    if full:
        job.request.ParseFromString(record.request)
    job.create_time.FromNanoseconds(_nanos(record.created))
    if record.started is not None:
        job.start_time.FromNanoseconds(_nanos(record.started))
    if record.finished is not None:
        job.finish_time.FromNanoseconds(_nanos(record.finished))
    if record.error_code:
        job.error.code = record.error_code  # deprecated; kept filled
        job.error.message = record.error_message
        job.error.status.CopyFrom(status_message(code_of_value(record.error_code), record.error_message))
    if full and record.result:
        job.result.ParseFromString(record.result)
    return job


def _nanos(seconds: float) -> int:
    return round(seconds * 1e9)
