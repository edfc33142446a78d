"""JobService: protobuf in, the job runtime's records out as protobuf; checks every field at the edge."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator

import grpc

from gateway.jobs.model import JobRecord, JobState
from gateway.jobs.runtime import JobRuntime
from gateway.request import plan_request
from genmesh.errors import InvalidArgument
from genmesh.v1 import gateway_pb2, jobs_pb2, jobs_pb2_grpc

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
MAX_IDEMPOTENCY_KEY = 256
MAX_PRIORITY = 1000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    """The JobService RPCs over a JobRuntime."""

    def __init__(self, runtime: JobRuntime) -> None:
        self._runtime = runtime

    async def SubmitJob(
        self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.SubmitJobResponse:
        try:
            plan_request(request.request, None)
        except InvalidArgument as error:
            raise error.prefixed("request") from None
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument.field("idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY} characters")
        if abs(request.priority) > MAX_PRIORITY:
            raise InvalidArgument.field("priority", f"must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
        body = request.request.SerializeToString(deterministic=True)
        record = await self._runtime.submit(body, request.idempotency_key, request.priority)
        return jobs_pb2.SubmitJobResponse(job=to_proto(record))

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=to_proto(await self._runtime.get(_job_id(request.id))))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        job_id = _job_id(request.id)
        if request.after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        async for item in self._runtime.watch(job_id, request.after_sequence):
            if isinstance(item, JobRecord):
                yield jobs_pb2.WatchJobResponse(attempt=item.attempts, job=to_proto(item))
            else:
                event = gateway_pb2.GatewayEvent.FromString(item.payload)
                yield jobs_pb2.WatchJobResponse(sequence=item.seq, attempt=item.attempt, event=event)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        return jobs_pb2.CancelJobResponse(job=to_proto(await self._runtime.cancel(_job_id(request.id))))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
        if request.state not in jobs_pb2.JobState.values():
            raise InvalidArgument.field("state", f"unknown job state {request.state}")
        state = JobState(request.state) if request.state else None
        before = decode_page_token(request.page_token, request.state) if request.page_token else None
        size = request.page_size or DEFAULT_PAGE_SIZE
        records = await self._runtime.list(state, before, size + 1)
        response = jobs_pb2.ListJobsResponse(jobs=[to_proto(r) for r in records[:size]])
        if len(records) > size:
            response.next_page_token = encode_page_token(records[size - 1].seq, request.state)
        return response


def _job_id(value: str) -> str:
    if not value:
        raise InvalidArgument.field("id", "must not be empty")
    return value


def encode_page_token(last_seq: int, state: int) -> str:
    """An opaque cursor: the page continues after the job numbered ``last_seq`` of the same state filter."""
    return base64.urlsafe_b64encode(f"jobs:{state}:{last_seq}".encode()).decode().rstrip("=")


def decode_page_token(token: str, state: int) -> int:
    """The cursor's job number; InvalidArgument naming page_token when it is not one of ours for ``state``."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        tag, token_state, seq = text.split(":")
        if tag != "jobs" or int(seq) < 1:
            raise ValueError(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "is not a token ListJobs returned") from None
    if int(token_state) != state:
        raise InvalidArgument.field("page_token", "was returned for a different state filter")
    return int(seq)


def to_proto(record: JobRecord) -> jobs_pb2.Job:
    """The Job message of a stored job."""
    job = jobs_pb2.Job(
        id=record.id,
        state=jobs_pb2.JobState.ValueType(int(record.state)),
        priority=record.priority,
        idempotency_key=record.idempotency_key,
        request=gateway_pb2.GatewayRequest.FromString(record.request),
        attempts=record.attempts,
    )
    job.create_time.FromNanoseconds(_nanos(record.created))
    if record.started is not None:
        job.start_time.FromNanoseconds(_nanos(record.started))
    if record.finished is not None:
        job.finish_time.FromNanoseconds(_nanos(record.finished))
    if record.error_code:
        job.error.code = record.error_code
        job.error.message = record.error_message
    if record.result:
        job.result.ParseFromString(record.result)
    return job


def _nanos(seconds: float) -> int:
    return round(seconds * 1e9)
