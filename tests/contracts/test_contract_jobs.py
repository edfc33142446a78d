"""The gateway's contract through real gRPC: ListJobs views (BASIC by default, FULL on request, GetJob FULL), and
the ErrorInfo reason of each cause of RESOURCE_EXHAUSTED it raises (stream cap, job queue), with JobError.status
carrying the same code as its deprecated fields."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from support.jobs_gateway import start_jobs_gateway, stop, wait_final
from support.streams import collect

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, ServiceProcess
from genmesh.status import error_info, error_info_of, retry_delay_s
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, jobs_pb2, jobs_pb2_grpc

DOMAIN = "genmesh.dev"


@pytest_asyncio.fixture(scope="module")
async def capped_gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """One Generate stream at a time, one job worker and room for one queued job: every cap is easy to reach."""
    root = tmp_path_factory.mktemp("contract-jobs")
    flags = ("--max-streams", "1", "--job-workers", "1", "--job-queue-max", "1")
    gateway = await start_jobs_gateway(mesh, root / "jobs.db", root / "logs", *flags)
    yield gateway
    await stop(gateway)


@pytest_asyncio.fixture
async def channel(capped_gateway: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(capped_gateway.address) as opened:
        yield opened


def _request(question: str, max_tokens: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=question)
    request.retrieval.disabled = True
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    return request


async def _submit(jobs: jobs_pb2_grpc.JobServiceStub, request: gateway_pb2.GatewayRequest) -> jobs_pb2.Job:
    job: jobs_pb2.Job = (await jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request=request), timeout=10)).job
    return job


async def _running(jobs: jobs_pb2_grpc.JobServiceStub, job_id: str) -> None:
    """Returns once the job produced its first token."""
    async for message in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job_id), timeout=60):
        if message.event.HasField("delta"):
            return
    raise AssertionError("the job ended before its first token")


def _assert_reason(error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str, **metadata: str) -> None:
    assert error.code() == code, error
    info = error_info(error)
    assert info is not None, f"{code.name} without ErrorInfo"
    assert (info.domain, info.reason) == (DOMAIN, reason)
    assert dict(info.metadata) == metadata


async def test_list_jobs_is_basic_by_default_and_full_on_request(channel: grpc.aio.Channel) -> None:
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    done = await wait_final(jobs, (await _submit(jobs, _request("What is a list?", 4))).id)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED and done.result.answer, "GetJob gives the FULL view"
    assert done.request.question == "What is a list?"

    async def listed(view: jobs_pb2.JobView.ValueType) -> jobs_pb2.Job:
        page: jobs_pb2.ListJobsResponse = await jobs.ListJobs(jobs_pb2.ListJobsRequest(view=view), timeout=10)
        return next(job for job in page.jobs if job.id == done.id)

    basic = await listed(jobs_pb2.JOB_VIEW_UNSPECIFIED)
    assert basic == await listed(jobs_pb2.JOB_VIEW_BASIC)
    assert not basic.HasField("request") and not basic.HasField("result"), "no request, no result"
    assert (basic.state, basic.attempts, basic.finish_time) == (done.state, done.attempts, done.finish_time)
    assert await listed(jobs_pb2.JOB_VIEW_FULL) == done

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.ListJobs(jobs_pb2.ListJobsRequest(view=7), timeout=10)  # type: ignore[arg-type]
    _assert_reason(caught.value, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.GetJob(jobs_pb2.GetJobRequest(id="job-00000000000000000000000000000000"), timeout=10)
    _assert_reason(caught.value, grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")


async def test_a_gateway_at_its_stream_cap_says_gateway_stream_limit(channel: grpc.aio.Channel) -> None:
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    held = gateway.Generate(_request("Explain the import system in detail.", 4096), timeout=120)
    try:
        assert (await held.read()).HasField("delta"), "the first stream holds the only slot"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(gateway.Generate(_request("One too many.", 4), timeout=30))
    finally:
        held.cancel()
    _assert_reason(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "GATEWAY_STREAM_LIMIT", maxStreams="1")
    assert retry_delay_s(caught.value)


async def test_a_full_job_queue_says_job_queue_full(channel: grpc.aio.Channel) -> None:
    jobs = jobs_pb2_grpc.JobServiceStub(channel)
    running = await _submit(jobs, _request("Explain descriptors in detail.", 4096))
    await _running(jobs, running.id)  # the only worker is busy from now on
    queued = await _submit(jobs, _request("Queued.", 4))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _submit(jobs, _request("One too many.", 4))
    _assert_reason(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "JOB_QUEUE_FULL", queuedJobs="1")
    assert retry_delay_s(caught.value)

    # A cancelled job's error: the in-band status says what the deprecated code and message say.
    for job in (queued, running):
        await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id), timeout=10)
        final = await wait_final(jobs, job.id)
        assert final.state == jobs_pb2.JOB_STATE_CANCELLED
        error = final.error
        assert error.status.code == error.code == grpc.StatusCode.CANCELLED.value[0]
        assert error.status.message == error.message and error.message
        info = error_info_of(error.status)
        assert info is not None and (info.domain, info.reason) == (DOMAIN, "CANCELLED")
