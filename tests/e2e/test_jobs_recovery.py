"""Fifty jobs, a gateway killed with SIGKILL while some run, a restart: every job ends, once, with its history."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from support.jobs_gateway import FINAL, list_all, start_jobs_gateway, stop, stored_jobs, wait_final, watch_all

from gateway.jobs.model import JobState
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh
from genmesh.v1 import gateway_pb2, jobs_pb2, jobs_pb2_grpc

JOBS = 50
WORKERS = 4


def _request(i: int) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=f"Question {i}: what does the yield statement do?")
    request.sampling.max_tokens = 24
    request.sampling.temperature = 0.0
    request.retrieval.disabled = i % 5 != 0  # every fifth job retrieves, every seventh calls a tool
    if i % 7 == 0:
        request.tool_calls.add(call_id="calc", name="calculator", arguments_json=f'{{"expression": "{i} * 2"}}')
    return request


async def _counts(stub: jobs_pb2_grpc.JobServiceStub) -> dict[int, int]:
    jobs = await list_all(stub, page_size=1000)
    counts: dict[int, int] = {}
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    return counts


async def test_jobs_survive_a_killed_gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("jobs-recovery")
    flags = ("--job-workers", str(WORKERS), "--job-max-attempts", "3")
    gateway = await start_jobs_gateway(mesh, root / "jobs.db", root / "logs", *flags)
    try:
        async with open_channel(gateway.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            submitted = []
            for i in range(JOBS):
                request = jobs_pb2.SubmitJobRequest(request=_request(i), idempotency_key=f"recovery-{i}")
                submitted.append((await stub.SubmitJob(request, timeout=10)).job.id)
            # Kill the gateway while some jobs are done, some run and the rest wait.
            deadline = time.monotonic() + 120
            while True:
                counts = await _counts(stub)
                if counts.get(jobs_pb2.JOB_STATE_SUCCEEDED, 0) >= 3 and counts.get(jobs_pb2.JOB_STATE_RUNNING, 0):
                    break
                assert time.monotonic() < deadline, counts
                await asyncio.sleep(0.02)
        gateway.process.kill()
        await gateway.process.wait()
        # The file as the killed gateway left it: exactly which jobs were done, running and waiting at the kill.
        at_kill = await stored_jobs(root / "jobs.db")
        states = {job_id: record.state for job_id, (record, _) in at_kill.items()}
        done = {job_id for job_id, state in states.items() if state is JobState.SUCCEEDED}
        interrupted = {job_id for job_id, state in states.items() if state is JobState.RUNNING}
        assert set(states.values()) == {JobState.SUCCEEDED, JobState.RUNNING, JobState.QUEUED}, states

        gateway = await start_jobs_gateway(mesh, root / "jobs.db", root / "logs", *flags)
        async with open_channel(gateway.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            # Resubmitting with the same keys after the restart adds nothing.
            for i in (0, 17, 49):
                again = jobs_pb2.SubmitJobRequest(request=_request(i), idempotency_key=f"recovery-{i}")
                assert (await stub.SubmitJob(again, timeout=10)).job.id == submitted[i]
            histories = await asyncio.gather(*(watch_all(stub, job_id) for job_id in submitted))
            listed = await list_all(stub)
    finally:
        await stop(gateway)

    assert sorted(j.id for j in listed) == sorted(submitted), "no job lost, none added"
    for i, (job_id, messages) in enumerate(zip(submitted, histories, strict=True)):
        final = messages[-1].job
        assert final.id == job_id and final.state in FINAL
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, (job_id, final.error)
        record, events_at_kill = at_kill[job_id]
        # Only the interrupted jobs ran again; the waiting ones ran once, after the restart.
        assert final.attempts == (2 if job_id in interrupted else 1), (job_id, states[job_id], final.attempts)
        events = messages[:-1]
        if job_id in done:  # finished before the kill: left as it was, history included
            assert record.finished is not None and final.finish_time.ToNanoseconds() == round(record.finished * 1e9)
            assert final.result == jobs_pb2.JobResult.FromString(record.result)
            stored = [(e.seq, e.attempt, gateway_pb2.GatewayEvent.FromString(e.payload)) for e in events_at_kill]
            assert [(m.sequence, m.attempt, m.event) for m in events] == stored
        # The history is one attempt's: numbered on from the interrupted attempt's numbers, without a gap or
        # a repeat, one completion at its end.
        first = record.seq_base + 1 if job_id in done else max([record.seq_base, *(e.seq for e in events_at_kill)]) + 1
        assert [m.sequence for m in events] == list(range(first, first + len(events)))
        assert {m.attempt for m in events} == {final.attempts}
        kinds = [m.event.WhichOneof("event") for m in events]
        assert kinds.count("complete") == 1 and kinds[-1] == "complete", kinds
        assert kinds.count("sources") == (1 if i % 5 == 0 else 0)
        assert kinds.count("tool_result") == len(final.result.tool_results) == (1 if i % 7 == 0 else 0)
        answer = "".join(m.event.delta.text for m in events if m.event.HasField("delta"))
        assert answer == final.result.answer and answer
        tokens = sum(len(m.event.delta.token_ids) for m in events)
        assert tokens == final.result.completion.usage.completion_tokens


async def _running_job(stub: jobs_pb2_grpc.JobServiceStub, max_tokens: int) -> str:
    """Submit one job and return its id once it produced its first token."""
    request = _request(1)
    request.sampling.max_tokens = max_tokens
    job = (await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=request), timeout=10)).job
    async for message in stub.WatchJob(jobs_pb2.WatchJobRequest(id=job.id), timeout=60):
        if message.event.HasField("delta"):
            return str(job.id)
    raise AssertionError("the job ended before its first token")


async def test_a_graceful_stop_requeues_without_counting_and_attempts_run_out(
    mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("jobs-attempts")
    db, logs = root / "jobs.db", root / "logs"
    flags = ("--job-workers", "1", "--job-max-attempts", "1", "--grace", "0.5")
    gateway = await start_jobs_gateway(mesh, db, logs, *flags)
    try:
        async with open_channel(gateway.address) as channel:
            requeued = await _running_job(jobs_pb2_grpc.JobServiceStub(channel), max_tokens=200)
        await stop(gateway)  # SIGTERM: the running job goes back to the queue, its attempt not counted

        gateway = await start_jobs_gateway(mesh, db, logs, *flags)
        async with open_channel(gateway.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            done = await wait_final(stub, requeued)
            assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED and done.attempts == 1, done
            doomed = await _running_job(stub, max_tokens=4096)
        gateway.process.kill()  # SIGKILL: the attempt counts, and it was the only one allowed
        await gateway.process.wait()

        gateway = await start_jobs_gateway(mesh, db, logs, *flags)
        async with open_channel(gateway.address) as channel:
            failed = await wait_final(jobs_pb2_grpc.JobServiceStub(channel), doomed)
    finally:
        await stop(gateway)
    assert failed.state == jobs_pb2.JOB_STATE_FAILED and failed.attempts == 1
    assert failed.error.code == grpc.StatusCode.ABORTED.value[0]
    assert "stopped during attempt 1, the last of 1 (--job-max-attempts)" in failed.error.message, failed.error


async def test_finished_jobs_expire_after_the_retention(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("jobs-retention")
    gateway = await start_jobs_gateway(mesh, root / "jobs.db", root / "logs", "--job-retention", "1")
    try:
        async with open_channel(gateway.address) as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            request = jobs_pb2.SubmitJobRequest(request=_request(3), idempotency_key="short-lived")
            job = (await stub.SubmitJob(request, timeout=10)).job
            assert (await wait_final(stub, job.id)).state == jobs_pb2.JOB_STATE_SUCCEEDED
            deadline = time.monotonic() + 30
            while await list_all(stub):
                assert time.monotonic() < deadline, "the finished job was never purged"
                await asyncio.sleep(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            # Its idempotency key is free again: the same submit queues a new job.
            assert (await stub.SubmitJob(request, timeout=10)).job.id != job.id
    finally:
        await stop(gateway)
