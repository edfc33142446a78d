"""JobService against real processes: a job runs Generate's pipeline; idempotency, cancel, a full queue, bad input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.jobs_gateway import list_all, start_jobs_gateway, stop, wait_final, watch_all
from support.streams import collect

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, ServiceProcess
from genmesh.health import check
from genmesh.status import field_violations, retry_delay_s
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, inference_pb2_grpc, jobs_pb2, jobs_pb2_grpc

QUEUE_MAX = 2


@pytest_asyncio.fixture(scope="module")
async def job_gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """One worker and room for two queued jobs, so that a full queue is easy to reach."""
    root = tmp_path_factory.mktemp("jobs-api")
    flags = ("--job-workers", "1", "--job-queue-max", str(QUEUE_MAX))
    gateway = await start_jobs_gateway(mesh, root / "jobs.db", root / "logs", *flags)
    yield gateway
    await stop(gateway)


@pytest_asyncio.fixture
async def jobs(job_gateway: ServiceProcess) -> AsyncIterator[jobs_pb2_grpc.JobServiceStub]:
    async with open_channel(job_gateway.address) as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


def _request(question: str, max_tokens: int = 8, **kwargs: object) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question=question, **kwargs)  # type: ignore[arg-type]
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0.0
    return request


async def _submit(
    stub: jobs_pb2_grpc.JobServiceStub, request: gateway_pb2.GatewayRequest, key: str = ""
) -> jobs_pb2.Job:
    response = await stub.SubmitJob(jobs_pb2.SubmitJobRequest(request=request, idempotency_key=key), timeout=10)
    job: jobs_pb2.Job = response.job
    return job


async def test_a_job_runs_the_generate_pipeline_and_keeps_its_events(
    jobs: jobs_pb2_grpc.JobServiceStub, job_gateway: ServiceProcess
) -> None:
    request = _request("How does the with statement use a context manager?", max_tokens=12)
    request.tool_calls.add(call_id="calc", name="calculator", arguments_json='{"expression": "6 * 7"}')
    job = await _submit(jobs, request)
    assert job.state == jobs_pb2.JOB_STATE_QUEUED and job.id.startswith("job-") and job.attempts == 0
    assert job.HasField("create_time") and not job.HasField("finish_time")

    messages = await watch_all(jobs, job.id)
    final = messages[-1].job
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    events = [m.event for m in messages[:-1]]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.count("sources") == 1 and kinds.count("tool_result") == 1 and kinds[-1] == "complete"
    assert [m.sequence for m in messages[:-1]] == list(range(1, len(events) + 1))
    assert {m.attempt for m in messages} == {1} and final.attempts == 1
    result = final.result
    assert result.answer == "".join(e.delta.text for e in events if e.HasField("delta")) and result.answer
    assert result.completion.usage.completion_tokens == sum(len(e.delta.token_ids) for e in events)
    assert [t.name for t in result.tool_results] == ["calculator"] and "42" in result.tool_results[0].result_json
    assert len(result.sources) == len(events[kinds.index("sources")].sources.passages) > 0
    assert final.start_time.ToNanoseconds() >= final.create_time.ToNanoseconds()
    assert final.finish_time.ToNanoseconds() >= final.start_time.ToNanoseconds()

    # The same request through Generate gives the same (greedy) answer: it is the same pipeline.
    async with open_channel(job_gateway.address) as channel:
        direct = await collect(gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=60))
    assert direct.text == result.answer

    # A finished job replays the same history, and a watch resumes after a sequence number.
    assert await watch_all(jobs, job.id) == messages
    tail = [m async for m in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id, after_sequence=2), timeout=30)]
    assert tail == messages[2:]
    got = (await jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), timeout=10)).job
    assert got == final


async def test_the_same_idempotency_key_gives_one_job(jobs: jobs_pb2_grpc.JobServiceStub) -> None:
    key = f"report-{time.time_ns()}"
    request = _request("What is a generator?")
    first, second = await asyncio.gather(_submit(jobs, request, key), _submit(jobs, request, key))
    assert first.id == second.id and first.idempotency_key == key
    done = await wait_final(jobs, first.id)
    again = await _submit(jobs, request, key)
    assert again.id == first.id and again.state == done.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert [j.id for j in await list_all(jobs) if j.idempotency_key == key] == [first.id]

    other = _request("Something else entirely")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _submit(jobs, other, key)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["idempotency_key"]


async def _load(inference: inference_pb2_grpc.InferenceServiceStub) -> inference_pb2.GetLoadResponse:
    load: inference_pb2.GetLoadResponse = await inference.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)
    return load


async def _first_delta(stub: jobs_pb2_grpc.JobServiceStub, job_id: str) -> None:
    async for message in stub.WatchJob(jobs_pb2.WatchJobRequest(id=job_id), timeout=60):
        if message.event.HasField("delta"):
            return
    raise AssertionError("the job ended before its first token")


async def test_cancelling_a_running_job_cancels_its_inference(
    mesh: Mesh, jobs: jobs_pb2_grpc.JobServiceStub, inference: inference_pb2_grpc.InferenceServiceStub
) -> None:
    info = await inference.GetModelInfo(inference_pb2.GetModelInfoRequest(), timeout=10)
    request = _request("Explain the import system in detail.", max_tokens=4096, request_id="job-cancel-me-1")
    request.retrieval.disabled = True
    job = await _submit(jobs, request)
    watcher = asyncio.create_task(watch_all(jobs, job.id))
    await _first_delta(jobs, job.id)
    before = await _load(inference)
    assert before.running == 1, "the job's generation is running in the inference service"
    # On its own the generation would go on until its row is full (greedy, max_tokens past the context).
    room = info.context_length - before.kv_used_tokens
    assert room > 200, room

    cancelled = (await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id), timeout=10)).job
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED and cancelled.HasField("finish_time")
    assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
    # Inference frees the row within a few steps: measured in tokens generated after the cancel, not in seconds.
    deadline = time.monotonic() + 60
    while (load := await _load(inference)).running:
        grown = load.kv_used_tokens - before.kv_used_tokens
        assert grown < room // 2, f"inference generated {grown} more tokens for the cancelled job"
        assert time.monotonic() < deadline, load
        await asyncio.sleep(0.005)
    assert load.kv_used_tokens == 0 and load.waiting == 0, load
    messages = await asyncio.wait_for(watcher, 30)
    assert messages[-1].job.state == jobs_pb2.JOB_STATE_CANCELLED
    assert not any(m.event.HasField("complete") for m in messages)

    # The inference service itself recorded the job's Generate call as cancelled.
    log = mesh.services["inference"].log_path
    assert log is not None
    lines: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            ln
            for ln in log.read_text().splitlines()
            if "request_id=job-cancel-me-1" in ln and "method=/genmesh.v1.InferenceService/Generate" in ln
        ]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert lines and "status=CANCELLED" in lines[-1], lines

    # Cancelling a finished job changes nothing.
    again = (await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id), timeout=10)).job
    assert again == cancelled


async def test_a_full_queue_answers_resource_exhausted_with_retry_info(jobs: jobs_pb2_grpc.JobServiceStub) -> None:
    busy = _request("Explain descriptors in detail.", max_tokens=4096)
    busy.retrieval.disabled = True
    running = await _submit(jobs, busy)
    await _first_delta(jobs, running.id)  # the only worker is busy from now on
    waiting = [await _submit(jobs, _request(f"Queued question {i}")) for i in range(QUEUE_MAX)]
    assert all(j.state == jobs_pb2.JOB_STATE_QUEUED for j in waiting)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _submit(jobs, _request("One too many"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay_s(caught.value)
    assert delay is not None and delay > 0
    queued = await list_all(jobs, state=jobs_pb2.JOB_STATE_QUEUED)
    assert sorted(j.id for j in queued) == sorted(j.id for j in waiting)

    for job in waiting:  # a queued job is cancelled at once and never runs
        cancelled = (await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id), timeout=10)).job
        assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED and cancelled.attempts == 0
    await jobs.CancelJob(jobs_pb2.CancelJobRequest(id=running.id), timeout=10)
    assert (await wait_final(jobs, running.id)).state == jobs_pb2.JOB_STATE_CANCELLED
    accepted = await _submit(jobs, _request("Room again"))
    assert (await wait_final(jobs, accepted.id)).state == jobs_pb2.JOB_STATE_SUCCEEDED


async def _fails(call: Any, code: grpc.StatusCode, fields: list[str] | None = None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            [m async for m in call]
        else:
            await call
    assert caught.value.code() == code, caught.value
    if fields is not None:
        assert [v.field for v in field_violations(caught.value)] == fields


async def test_bad_input_gets_a_clear_status(jobs: jobs_pb2_grpc.JobServiceStub) -> None:
    missing = "job-00000000000000000000000000000000"
    not_found = grpc.StatusCode.NOT_FOUND
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await _fails(jobs.GetJob(jobs_pb2.GetJobRequest(id=missing), timeout=10), not_found)
    await _fails(jobs.CancelJob(jobs_pb2.CancelJobRequest(id=missing), timeout=10), not_found)
    await _fails(jobs.WatchJob(jobs_pb2.WatchJobRequest(id=missing), timeout=10), not_found)
    await _fails(jobs.GetJob(jobs_pb2.GetJobRequest(), timeout=10), invalid, ["id"])
    await _fails(jobs.WatchJob(jobs_pb2.WatchJobRequest(id=missing, after_sequence=-1), timeout=10), invalid)
    for token in ("not-a-token", "am9iczo1OjE", "amlmZnk"):
        await _fails(jobs.ListJobs(jobs_pb2.ListJobsRequest(page_token=token), timeout=10), invalid, ["page_token"])
    await _fails(jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=-1), timeout=10), invalid, ["page_size"])
    await _fails(jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=5000), timeout=10), invalid, ["page_size"])
    bad_submit = jobs_pb2.SubmitJobRequest(request=_request("  "), priority=5000)
    await _fails(jobs.SubmitJob(bad_submit, timeout=10), invalid, ["request.question"])
    await _fails(
        jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request=_request("fine"), priority=5000), timeout=10),
        invalid,
        ["priority"],
    )
    await _fails(
        jobs.SubmitJob(jobs_pb2.SubmitJobRequest(request=_request("fine"), idempotency_key="k" * 300), timeout=10),
        invalid,
        ["idempotency_key"],
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "genmesh.cli", "jobs", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


async def test_the_jobs_command_line(job_gateway: ServiceProcess) -> None:
    target = ("--target", job_gateway.address)
    submitted = await asyncio.to_thread(
        _cli, "submit", "What is a decorator?", "--max-tokens", "8", "--tool", 'calculator:{"expression": "3*3"}',
        "--idempotency-key", "cli-1", "--watch", *target,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id, *watched = submitted.stdout.splitlines()
    output = "\n".join(watched)
    assert job_id.startswith("job-") and "Sources:" in output and "Tool calculator" in output
    assert "Answer: " in output and "finish: length" in output and output.endswith(f"job {job_id}: succeeded")

    shown = await asyncio.to_thread(_cli, "get", job_id, *target)
    fields = dict(line.split(":", 1) for line in shown.stdout.splitlines() if ":" in line)
    assert shown.returncode == 0 and fields["state"].strip() == "succeeded" and fields["key"].strip() == "cli-1"
    listed = await asyncio.to_thread(_cli, "list", "--state", "succeeded", "--page-size", "1000", *target)
    assert listed.returncode == 0 and job_id in listed.stdout
    cancelled = await asyncio.to_thread(_cli, "cancel", job_id, *target)
    assert cancelled.stdout.strip() == f"{job_id} succeeded", "a finished job stays as it is"
    missing = await asyncio.to_thread(_cli, "watch", "job-missing", *target)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


async def test_job_service_is_listed_by_reflection_and_health(job_gateway: ServiceProcess) -> None:
    async with open_channel(job_gateway.address) as channel:
        assert await check(channel, "genmesh.v1.JobService") == "SERVING"
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=10)]
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"genmesh.v1.GatewayService", "genmesh.v1.JobService"} <= names
