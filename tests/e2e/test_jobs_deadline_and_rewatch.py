"""Jobs on gateways of their own: a run past --job-timeout fails, a watch broken by a killed gateway resumes."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from support.jobs_gateway import start_jobs_gateway, stop, watch_all

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, free_port
from genmesh.v1 import gateway_pb2, jobs_pb2, jobs_pb2_grpc

#: --job-timeout of the first test. The job runs until its KV row is full (hundreds of greedy steps, 1.5 s on
#: an idle 2-core machine), so it cannot end on its own first; load only makes it slower.
TIMEOUT_S = 0.3
#: Deltas the watcher has seen when the gateway is killed.
SEEN_DELTAS = 5


def _long_request(question: str) -> gateway_pb2.GatewayRequest:
    """A job that runs until its row is full: greedy, no retrieval, max_tokens past the model's context."""
    request = gateway_pb2.GatewayRequest(question=question)
    request.sampling.max_tokens = 4096
    request.sampling.temperature = 0.0
    request.retrieval.disabled = True
    return request


async def test_a_run_past_the_job_timeout_fails_with_deadline_exceeded(
    mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("jobs-timeout")
    flags = ("--job-workers", "1", "--job-timeout", str(TIMEOUT_S))
    gateway = await start_jobs_gateway(mesh, root / "jobs.db", root / "logs", *flags)
    try:
        async with open_channel(gateway.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            request = jobs_pb2.SubmitJobRequest(request=_long_request("Explain the import system in detail."))
            job = (await stub.SubmitJob(request, timeout=10)).job
            messages = await watch_all(stub, job.id)
    finally:
        await stop(gateway)
    final = messages[-1].job
    assert final.state == jobs_pb2.JOB_STATE_FAILED and final.attempts == 1, final
    deadline_exceeded = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert final.error.code == final.error.status.code == deadline_exceeded, final.error
    assert final.error.status.message == final.error.message != ""
    assert not final.HasField("result") and not any(m.event.HasField("complete") for m in messages[:-1])
    ran_s = (final.finish_time.ToNanoseconds() - final.start_time.ToNanoseconds()) / 1e9
    assert ran_s >= TIMEOUT_S - 0.1, "it ran for its whole time limit (less the margin kept for upstream calls)"


async def _read_until_broken(
    call: grpc.aio.UnaryStreamCall[jobs_pb2.WatchJobRequest, jobs_pb2.WatchJobResponse],
    seen: list[jobs_pb2.WatchJobResponse],
) -> grpc.aio.AioRpcError:
    """Read the rest of a watch that the gateway's death breaks; its error."""
    with pytest.raises(grpc.aio.AioRpcError) as broken:
        while (message := await call.read()) is not grpc.aio.EOF:
            assert isinstance(message, jobs_pb2.WatchJobResponse)
            seen.append(message)
    return broken.value


async def test_a_watch_broken_by_a_killed_gateway_resumes_after_its_last_sequence(
    mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("jobs-rewatch")
    db, logs, port = root / "jobs.db", root / "logs", free_port()
    gateway = await start_jobs_gateway(mesh, db, logs, port=port)
    try:
        async with open_channel(gateway.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            request = jobs_pb2.SubmitJobRequest(request=_long_request("How do generators and coroutines differ?"))
            job = (await stub.SubmitJob(request, timeout=10)).job
            call = stub.WatchJob(jobs_pb2.WatchJobRequest(id=job.id), timeout=120)
            seen: list[jobs_pb2.WatchJobResponse] = []
            while sum(m.event.HasField("delta") for m in seen) < SEEN_DELTAS:
                message = await call.read()
                assert isinstance(message, jobs_pb2.WatchJobResponse), "the job ended before the kill"
                seen.append(message)
            gateway.process.kill()  # mid-run: the stream is open, the job's first attempt is running
            await gateway.process.wait()
            broken = await _read_until_broken(call, seen)
            assert broken.code() == grpc.StatusCode.UNAVAILABLE, broken
            assert not any(m.HasField("job") for m in seen), "the stream ended without the final job"
            last = seen[-1].sequence
            assert [m.sequence for m in seen] == list(range(1, last + 1)) and {m.attempt for m in seen} == {1}

            # The same client, on the gateway restarted at the same address, once the job runs again.
            gateway = await start_jobs_gateway(mesh, db, logs, port=port)
            get = jobs_pb2.GetJobRequest(id=job.id)
            deadline = time.monotonic() + 60
            while (await stub.GetJob(get, timeout=10, wait_for_ready=True)).job.attempts < 2:
                assert time.monotonic() < deadline, "the interrupted job never ran again"
                await asyncio.sleep(0.01)
            resume = jobs_pb2.WatchJobRequest(id=job.id, after_sequence=last)
            resumed = [m async for m in stub.WatchJob(resume, timeout=120, wait_for_ready=True)]
            history = await watch_all(stub, job.id)
    finally:
        await stop(gateway)
    final = resumed[-1].job
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED and final.attempts == 2, final
    # The new attempt numbers its events after every one the client saw, so the resumed watch gets exactly the
    # job's history, nothing twice and no gap, following the run to its final state.
    assert resumed == history
    events = resumed[:-1]
    sequences = [m.sequence for m in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(events))) and sequences[0] > last
    assert {m.attempt for m in events} == {2}, "the first attempt's events were dropped with it"
    kinds = [m.event.WhichOneof("event") for m in events]
    assert kinds.count("complete") == 1 and kinds[-1] == "complete"
    assert "".join(m.event.delta.text for m in events if m.event.HasField("delta")) == final.result.answer
